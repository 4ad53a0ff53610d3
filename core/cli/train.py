"""``lorakiln train PRESET``: train headless, with a progress line; Ctrl+C stops and saves."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from core.cli.check import add_preset_arguments, load_with_overrides
from core.config.overrides import apply_overrides
from core.config.presets import PresetError, load_preset
from core.training.run_folder import CONFIG
from core.training.validation import ERROR, validate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_preset_arguments(parser, optional=True)  # not needed with --resume
    parser.add_argument("--output-dir", metavar="DIR", help="write the run folder under DIR")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue a stopped run from its saved state (its own config is used)")
    parser.add_argument("--quiet", action="store_true", help="print only the result")


class Progress:
    """Prints what the engine reports: one updating line on a terminal, plain lines otherwise."""

    def __init__(self, quiet: bool, stream=None) -> None:  # noqa: ANN001
        self.quiet = quiet
        # Looked up now, not when the module was imported: a caller may have replaced it since.
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty()
        self.last_line = 0.0
        self.result = None

    def emit(self, event) -> None:  # noqa: ANN001
        from core.training.events import (CheckpointSaved, EpochMetrics, Failed, Finished, RunStarted,
                                          SampleImage, Status, StepMetrics, StepSkipped)
        from core.training.metrics import format_duration

        if isinstance(event, (Finished, Failed)):
            self.result = event
            return
        if self.quiet:
            return
        if isinstance(event, StepMetrics):
            now = time.monotonic()
            if not self.tty and now - self.last_line < 5 and event.step not in (1, event.total_steps):
                return
            self.last_line = now
            dlr = "".join(f" DLR {v:.2e}" for v in list(event.dlr.values())[:1])
            width = 20
            filled = int(width * event.step / max(1, event.total_steps))
            line = (f"[{'#' * filled}{'.' * (width - filled)}] step {event.step}/{event.total_steps} "
                    f"epoch {event.epoch} loss {event.loss:.4f} avg {event.avg_loss:.4f}{dlr} "
                    f"{event.it_per_s:.2f} it/s ETA {format_duration(event.eta_s)}")
            self._line(line)
        elif isinstance(event, RunStarted):
            self._print(f"run folder {event.run_dir}\n{event.total_steps} steps, {event.epochs} epochs, "
                        f"{event.batches_per_epoch} batches per epoch")
        elif isinstance(event, EpochMetrics):
            self._print(f"epoch {event.epoch} done at step {event.step}: mean loss {event.mean_loss:.4f}")
        elif isinstance(event, CheckpointSaved):
            self._print(f"saved {event.path}")
        elif isinstance(event, StepSkipped):
            self._print(f"step {event.step} skipped: loss {event.loss} is not finite "
                        f"({event.in_a_row} in a row, {event.skipped_total} in all)")
        elif isinstance(event, SampleImage):
            self._print(f"sample {event.path}")
        elif isinstance(event, Status) and event.phase != "training":
            self._print(event.text)

    def _line(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r" + text[:150].ljust(150))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _print(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r" + " " * 150 + "\r")
        self.stream.write(text + "\n")
        self.stream.flush()


def _install_interrupt(control) -> None:  # noqa: ANN001
    def handler(signum, frame):  # noqa: ANN001, ARG001
        if control.stop_requested:
            print("\ncancelling without saving…", file=sys.stderr, flush=True)
            control.request_cancel()
        else:
            print("\nstopping after this step and saving (Ctrl+C again to cancel without saving)…",
                  file=sys.stderr, flush=True)
            control.request_stop()

    signal.signal(signal.SIGINT, handler)


def _load(args: argparse.Namespace):  # noqa: ANN202
    if args.resume:
        run_dir = Path(args.resume)
        loaded = load_preset(run_dir / CONFIG)
        problems = apply_overrides(loaded.config, args.overrides)
        if problems:
            raise PresetError("--set", problems)
        return loaded, run_dir
    if not args.preset:
        raise PresetError("lorakiln train", [("", "give a PRESET (file or built-in name), or --resume RUN_DIR")])
    return load_with_overrides(args), None


def run(args: argparse.Namespace) -> int:
    try:
        loaded, resume = _load(args)
    except PresetError as err:
        print(err, file=sys.stderr)
        return 2
    config = loaded.config
    if args.output_dir:
        config.output.output_dir = str(Path(args.output_dir).expanduser().resolve())
    problems = [p for p in validate(config) if p.severity == ERROR]
    if problems:
        print("the configuration has errors; nothing was trained:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    from core.training.control import Control
    from core.training.engine import Trainer
    from core.training.events import Failed

    control = Control()
    _install_interrupt(control)
    progress = Progress(args.quiet)
    base_dir = loaded.path.resolve().parent if loaded.path else None
    Trainer(config, progress, control, description=loaded.description, resume_from=resume, base_dir=base_dir).run()
    result = progress.result
    if result is None:  # not the main process of a multi-GPU launch: it reports nothing
        return 0
    if isinstance(result, Failed):
        print(f"\ntraining failed: {result.summary}", file=sys.stderr)
        for advice in result.advice:
            print(f"  - {advice}", file=sys.stderr)
        if result.log_path:
            print(f"log: {result.log_path}", file=sys.stderr)
        if result.last_checkpoint:
            print(f"last good checkpoint: {result.last_checkpoint}", file=sys.stderr)
        return 1
    if progress.tty:
        print()
    if result.reason == "already_complete":
        print(f"already complete: the saved state is at step {result.steps}; nothing was trained or changed. "
              f"LoRA: {result.lora_path or 'none in the run folder'}")
        return 0
    skipped = getattr(result, "skipped_steps", 0)
    note = f" ({skipped} skipped for a non-finite loss)" if skipped else ""
    print(f"{result.reason}: {result.steps} steps{note} in {result.wall_seconds:.0f} s; "
          f"LoRA: {result.lora_path or 'not saved (cancelled)'}")
    return 130 if result.reason == "cancelled" else 0
