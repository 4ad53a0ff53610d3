"""Run folders: everything one training writes, laid out so runs can be reopened and compared.

    <runs>/<YYYYmmdd-HHMMSS>-<name>/
        config.toml      the full resolved configuration (every field)
        plan.json        the bucket plan, as `lorakiln plan --json` prints it
        metrics.jsonl    one JSON object per line, appended as training happens
        summary.json     status and the headline numbers, rewritten atomically
        log.txt          the run's log
        <name>.safetensors               the final LoRA
        checkpoints/<name>-000002.safetensors (epoch 2), <name>-step00000500.safetensors (step 500)
        state/           optimizer/scheduler/RNG state for resuming (when saved)
        samples/         sample images
        tensorboard/     event files with Kohya's tag names (when logging is on)
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from core.atomic import write_text_atomic
from core.config import TrainConfig
from core.paths import default_runs_dir
from core.presets import dumps_preset

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
CONFIG = "config.toml"
PLAN = "plan.json"
LOG = "log.txt"


def runs_root(config: TrainConfig) -> Path:
    return Path(config.output.output_dir).expanduser() if config.output.output_dir else default_runs_dir()


def create_run_dir(config: TrainConfig, when: float | None = None) -> Path:
    """A new, unique run folder under the output folder."""
    root = runs_root(config)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when or time.time()))
    base = f"{stamp}-{config.output.output_name}"
    for suffix in [""] + [f"-{i}" for i in range(2, 1000)]:
        candidate = root / (base + suffix)
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a new run folder in {root}")


def write_config(run_dir: Path, config: TrainConfig, description: str = "") -> None:
    write_text_atomic(run_dir / CONFIG, dumps_preset(config, sparse=False, description=description))


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(_finite(data), indent=1, ensure_ascii=False) + "\n")


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as null (or "inf" for an unbounded setting)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class MetricsWriter:
    """Appends one JSON line per record and flushes it, so a crash loses at most the line
    being written; readers skip an incomplete last line, and a writer reopening the file
    (a resumed run) cuts that line off first, so it never glues onto the next record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        drop_torn_tail(path)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps(_finite(record), ensure_ascii=False) + "\n")
            self._file.flush()
        except OSError as error:
            if error.filename is None:  # a full disk names no file; the person needs to know which
                error.filename = str(self.path)
            raise

    def close(self) -> None:
        if self._file.closed:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:  # a full disk fails the flush; the file must still be closed
            try:
                self._file.close()
            except OSError:
                pass


def drop_torn_tail(path: Path) -> int:
    """Truncate a file after its last newline (the line a killed process was writing);
    returns the bytes removed."""
    try:
        handle = open(path, "rb+")  # noqa: SIM115
    except FileNotFoundError:
        return 0
    with handle:
        end = handle.seek(0, os.SEEK_END)
        position = end
        while position > 0:
            start = max(0, position - 4096)
            handle.seek(start)
            chunk = handle.read(position - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            position = start
        else:
            keep = 0
        if keep < end:
            handle.truncate(keep)
        return end - keep


def trim_metrics(path: Path, last_step: int) -> int:
    """Keep the records up to ``last_step``: a run resumed from the state saved at that step
    trains the later steps again, and one curve must not hold two versions of them (a
    killed run had recorded some). Rewritten atomically; returns the records dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for record in read_metrics(path):
        if isinstance(record.get("step"), int) and record["step"] > last_step:
            dropped += 1
        else:
            kept.append(json.dumps(record, ensure_ascii=False) + "\n")
    write_text_atomic(path, "".join(kept))
    return dropped


def read_metrics(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete record of a metrics file; a torn last line is ignored."""
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            if not line.endswith("\n"):
                break  # written when the process died: incomplete
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


@dataclass
class RunSummary:
    status: str  # running, completed, stopped, cancelled, failed
    name: str
    steps: int = 0
    total_steps: int = 0
    epochs: int = 0
    total_epochs: int = 0
    wall_seconds: float = 0.0
    peak_vram_mb: float = 0.0
    memory_kind: str = "cuda"
    final_loss: float | None = None
    mean_last_epoch_loss: float | None = None
    lora_path: str | None = None
    started_at: float = 0.0
    finished_at: float | None = None
    error: str | None = None
    last_checkpoint: str | None = None
    state_path: str | None = None
    skipped_steps: int = 0  # steps left out for a NaN/inf loss

    # The process training the run (core.processes.this_process), so that a run whose process
    # was killed is not shown as running for ever.
    runner: dict[str, Any] | None = None

    def write(self, run_dir: Path) -> None:
        write_json(run_dir / SUMMARY, self.__dict__)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
