"""``lorakiln queue``: list, add to, reorder and run the training queue the app shows."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from core.cli.check import add_preset_arguments, load_with_overrides
from core.config.presets import PresetError
from core.studies.queue_runner import run_queue
from core.studies.run_queue import ENDED, QueueError, QueueItem, RunQueue
from core.studies.sweep import SweepError, parse_vary
from core.system.words import count
from core.training.validation import errors, validate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: given before or after the action, the option is kept (not reset by the sub-parser)
    common.add_argument("--queue-file", metavar="FILE", default=argparse.SUPPRESS,
                        help="use this queue file instead of the app's (<user data>/queue.json)")
    parser.add_argument("--queue-file", metavar="FILE", default=None, help=argparse.SUPPRESS)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", title="actions", required=True)
    actions.add_parser("list", parents=[common], help="show the queue with each item's id and status")
    add = actions.add_parser("add", parents=[common], help="queue a preset (with --set overrides), "
                                                          "or one run per value with --vary")
    add_preset_arguments(add)
    add.add_argument("--label", default="", help="the name shown in the queue (default: the LoRA's name)")
    add.add_argument("--output-dir", metavar="DIR", help="write the run folder under DIR")
    add.add_argument("--vary", metavar="GROUP.FIELD=V1,V2,...", help="queue a sweep: one item per value")
    remove = actions.add_parser("remove", parents=[common], help="take an item out of the queue")
    remove.add_argument("id", help="the item's id (or the start of it) as `queue list` shows")
    move = actions.add_parser("move", parents=[common], help="move an item to another position")
    move.add_argument("id", help="the item's id (or the start of it)")
    move.add_argument("position", type=int, help="the new position, 1 = first")
    actions.add_parser("run", parents=[common], help="train the pending items in order (Ctrl+C stops and "
                                                     "saves the current run and ends the queue)")
    actions.add_parser("clear", parents=[common], help="remove every item that has ended")


def _find(queue: RunQueue, ref: str) -> QueueItem:
    matches = [item for item in queue.items if item.id == ref] or \
              [item for item in queue.items if item.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(item.id for item in queue.items) or "the queue is empty"
    if matches:
        raise QueueError(f"'{ref}' matches several items ({', '.join(m.id for m in matches)}); give more of the id")
    raise QueueError(f"no queue item '{ref}' (items: {known})")


def _print_list(queue: RunQueue) -> None:
    print(f"queue: {queue.path}")
    if not queue.items:
        print("  (empty)")
        return
    width = max(len(item.label) for item in queue.items)
    for position, item in enumerate(queue.items, 1):
        detail = item.message
        if item.run_dir:
            detail = f"{detail}  {item.run_dir}" if detail else item.run_dir
        print(f"  {position:>2}. {item.id}  {item.status:<11} {item.label.ljust(width)}  {detail}".rstrip())


def _add(queue: RunQueue, args: argparse.Namespace) -> int:
    loaded = load_with_overrides(args)
    config = loaded.config
    if args.output_dir:
        config.output.output_dir = str(Path(args.output_dir).expanduser().resolve())
    if args.vary:
        sweep_id, items = queue.add_sweep(config, parse_vary(args.vary), description=loaded.description)
        print(f"queued sweep {sweep_id}: " + ", ".join(f"{i.id} {i.label}" for i in items))
        return 0
    problems = errors(validate(config))
    if problems:
        print("the configuration has errors; nothing was queued:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    item = queue.add(config, label=args.label, description=loaded.description)
    print(f"queued {item.id} {item.label} (position {len(queue.items)})")
    return 0


def _run(queue: RunQueue) -> int:
    from core.cli.train import Progress
    from core.training.control import Control

    current: dict[str, Any] = {"control": None, "end_queue": False}

    def make_control(item: QueueItem) -> Control:
        current["control"] = Control()
        return current["control"]

    def make_sink(item: QueueItem) -> Progress:
        print(f"\n== {item.id} {item.label}")
        return Progress(quiet=False, stream=sys.stdout)

    def on_interrupt(signum: int, frame: object) -> None:  # noqa: ARG001
        current["end_queue"] = True  # also between two runs
        control = current["control"]
        if control is None:
            return
        if control.stop_requested:
            print("\ncancelling without saving…", file=sys.stderr, flush=True)
            control.request_cancel()
        else:
            print("\nstopping after this step and saving; the queue ends after this run "
                  "(Ctrl+C again to cancel without saving)…", file=sys.stderr, flush=True)
            control.request_stop()

    if queue.next_pending() is None:
        print("nothing is pending in the queue")
        return 0
    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        ran = run_queue(queue, make_sink, make_control, stop_after_current=lambda: current["end_queue"],
                        report=lambda line: print(f"queue: {line}", file=sys.stderr, flush=True))
    finally:
        signal.signal(signal.SIGINT, previous)
    print()
    for item in ran:
        print(f"{item.id} {item.label}: {item.status}" + (f" - {item.message}" if item.message else ""))
    if any(item.status == "failed" for item in ran):
        return 1
    return 0 if all(item.status == "completed" for item in ran) else 130


def run(args: argparse.Namespace) -> int:
    queue = RunQueue.load(Path(args.queue_file).expanduser() if args.queue_file else None)
    if queue.load_problem:
        print(queue.load_problem, file=sys.stderr)
    try:
        if args.action == "list":
            _print_list(queue)
        elif args.action == "add":
            return _add(queue, args)
        elif args.action == "remove":
            item = _find(queue, args.id)
            queue.remove(item.id)
            print(f"removed {item.id} {item.label}")
        elif args.action == "move":
            item = _find(queue, args.id)
            queue.move(item.id, args.position - 1)
            print(f"moved {item.id} {item.label} to position {queue.index_of(item.id) + 1}")
        elif args.action == "run":
            return _run(queue)
        elif args.action == "clear":
            removed = queue.clear_finished()
            print(f"removed {count(removed, 'ended item')} ({', '.join(ENDED)}); {len(queue.items)} left")
    except (PresetError, SweepError, QueueError) as err:
        print(err, file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`| head`): the CLI handles it
        raise
    except OSError as err:
        print(f"cannot write the queue file {queue.path}: {err.strerror or err}", file=sys.stderr)
        return 1
    return 0
