"""``lorakiln sweep PRESET --vary FIELD=V1,V2,...``: one run per value, then a comparison.

Each run gets a fresh trainer and its own LoRA name; Ctrl+C stops and saves the current run
and skips the rest. At the end a sweep record lists the run folders, and the comparison
table is printed and exported beside it (``<runs>/sweeps/<stamp>-<field>/``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

from core.cli.check import add_preset_arguments, load_with_overrides
from core.config.schema import TrainConfig
from core.config.presets import PresetError
from core.system.words import count
from core.training.run_folder import runs_root
from core.studies.sweep import SweepError, SweepSpec, parse_vary, sweep_configs, write_sweep_record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_preset_arguments(parser)
    parser.add_argument("--vary", required=True, metavar="GROUP.FIELD=V1,V2,...",
                        help="the parameter to sweep and its values, e.g. dataset.resolution=512,768,1024 "
                             "or optimizer.growth_rate=1.02,inf (lists in brackets: [768,512],[512,768])")
    parser.add_argument("--output-dir", metavar="DIR", help="write the run folders (and the sweep) under DIR")
    parser.add_argument("--dry-run", action="store_true", help="check the runs and print the plan; train nothing")


def _plan_lines(configs: list[tuple[str, TrainConfig]], spec: SweepSpec) -> list[str]:
    """One line per run: its LoRA name and, from the dataset plan, buckets, batches and steps."""
    from core.data.scan import scan_dataset
    from core.data.plan import plan_from_scan

    width = max(len(label) for label, _ in configs)
    lines, scan = [], None
    for index, (label, config) in enumerate(configs, 1):
        detail = ""
        try:
            # The scan depends only on the subsets: scan once unless the sweep varies them.
            if scan is None or spec.field.startswith("dataset.subsets"):
                scan = scan_dataset(config.dataset)
            plan = plan_from_scan(scan, config.dataset, config.training)
            if plan.steps is None:
                detail = "no usable images"
            else:
                steps = plan.steps
                buckets = len(plan.buckets)
                detail = (f"{buckets} bucket{'s' * (buckets != 1)}, {steps.batches_per_epoch} batches/epoch, "
                          f"{steps.max_train_steps} steps in {count(steps.epochs, 'epoch')}")
        except Exception as err:  # noqa: BLE001 - the plan is informative; the run reports it properly
            detail = f"cannot plan: {err}"
        lines.append(f"  {index}. {label.ljust(width)}  {config.output.output_name}  ({detail})")
    return lines


class _RunLine:
    """One line per run: rewritten in place with the step on a terminal, then the result."""

    def __init__(self, prefix: str, stream: Any = None) -> None:
        self.prefix, self.stream = prefix, stream or sys.stdout
        self.tty = self.stream.isatty()
        self.result: Any = None
        self.run_dir: str | None = None
        self.last_loss: float | None = None

    def emit(self, event: Any) -> None:
        from core.training.events import Failed, Finished, RunStarted, StepMetrics

        if isinstance(event, (Finished, Failed)):
            self.result = event
        elif isinstance(event, RunStarted):
            self.run_dir = event.run_dir
        elif isinstance(event, StepMetrics):
            self.last_loss = event.avg_loss
            if self.tty:
                self.stream.write(f"\r{self.prefix} step {event.step}/{event.total_steps} "
                                  f"loss {event.avg_loss:.4f}"[:150].ljust(150))
                self.stream.flush()

    def finish(self) -> None:
        from core.training.events import Failed

        result = self.result
        if isinstance(result, Failed):
            text = f"failed: {result.summary}"
        elif result is None:
            text = "no result"
        else:
            loss = f", loss {self.last_loss:.4f}" if self.last_loss is not None else ""
            text = f"{result.reason}: {result.steps} steps in {result.wall_seconds:.0f} s{loss}"
        where = f"  ({self.run_dir})" if self.run_dir else ""
        self.stream.write(("\r" if self.tty else "") + f"{self.prefix} {text}{where}".ljust(150 if self.tty else 0)
                          + "\n")
        self.stream.flush()


class _Interrupts:
    """Ctrl+C once: stop and save the current run, skip the rest; twice: cancel it unsaved."""

    def __init__(self) -> None:
        self.control: Any = None
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _Interrupts:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: object) -> None:  # noqa: ARG002
        if self.requested and self.control is not None:
            print("\ncancelling without saving…", file=sys.stderr, flush=True)
            self.control.request_cancel()
            return
        self.requested = True
        print("\nstopping this run after its step and saving; the remaining runs are skipped "
              "(Ctrl+C again to cancel without saving)…", file=sys.stderr, flush=True)
        if self.control is not None:
            self.control.request_stop()


def _train_all(configs: list[tuple[str, TrainConfig]], description: str) -> tuple[list[Path], list[str]]:
    """Run each configuration with a fresh Trainer; returns the run folders and each run's outcome."""
    from core.training.control import Control
    from core.training.engine import Trainer
    from core.training.events import Failed

    run_dirs: list[Path] = []
    outcomes: list[str] = []
    with _Interrupts() as interrupts:
        for index, (label, config) in enumerate(configs, 1):
            prefix = f"[{index}/{len(configs)}] {label}"
            if interrupts.requested:
                print(f"{prefix} skipped")
                outcomes.append("skipped")
                continue
            line = _RunLine(prefix)
            interrupts.control = Control()
            Trainer(config, line, interrupts.control, description=description).run()
            line.finish()
            if line.run_dir:
                run_dirs.append(Path(line.run_dir))
            outcomes.append("failed" if isinstance(line.result, Failed) or line.result is None
                            else line.result.reason)
    return run_dirs, outcomes


def _compare(record: Path, spec: SweepSpec, run_dirs: list[Path]) -> None:
    """Print the comparison table and export it beside the sweep record."""
    from core.studies.compare import comparison_table, export_comparison, table_to_markdown
    from core.studies.run_index import load_run

    records = [load_run(path) for path in run_dirs]
    print()
    print(table_to_markdown(comparison_table(records), title=f"Sweep of {spec.field}"))
    out_dir = record.with_suffix("")
    export_comparison(records, out_dir)
    print(f"\ncomparison (table and plots): {out_dir}")


def run(args: argparse.Namespace) -> int:
    try:
        loaded = load_with_overrides(args)
        spec = parse_vary(args.vary)
        base = loaded.config
        if args.output_dir:
            base.output.output_dir = str(Path(args.output_dir).expanduser().resolve())
        configs = sweep_configs(base, spec)
    except (PresetError, SweepError) as err:
        print(err, file=sys.stderr)
        print("nothing was trained", file=sys.stderr)
        return 2
    root = runs_root(base)
    print(f"sweep of {spec.field}: {len(configs)} runs into {root}")
    print("\n".join(_plan_lines(configs, spec)))
    if args.dry_run:
        return 0
    started, started_at = time.monotonic(), time.time()
    run_dirs, outcomes = _train_all(configs, loaded.description)
    print(f"sweep finished in {time.monotonic() - started:.0f} s: "
          + ", ".join(f"{outcomes.count(o)} {o}" for o in dict.fromkeys(outcomes)))
    if run_dirs:
        try:
            record = write_sweep_record(root, spec, run_dirs, when=started_at)
            print(f"sweep record: {record}")
            _compare(record, spec, run_dirs)
        except BrokenPipeError:  # the reader went away (`| head`): the CLI handles it
            raise
        except OSError as err:  # the runs themselves are saved; only the sweep's summary is missing
            print(f"could not write the sweep's record or comparison under {root}: {err.strerror or err}",
                  file=sys.stderr)
            return 1
    else:
        print("no run created a run folder: there is nothing to compare", file=sys.stderr)
    if "failed" in outcomes:
        return 1
    return 0 if all(o == "completed" for o in outcomes) else 130
