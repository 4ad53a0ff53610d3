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

from core.system.atomic import write_bytes_atomic, write_text_atomic
from core.config.schema import TrainConfig
from core.system.paths import default_runs_dir
from core.config.presets import dumps_preset

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


@dataclass
class DamagedLines:
    """The complete lines of a metrics file that hold no record: not UTF-8 (a flipped byte, a
    line cut inside a multi-byte character and glued to the next), not JSON, or not a JSON
    object. Readers skip them and count them here, so a person can be told that a curve is
    missing points instead of the whole file failing to read."""

    count: int = 0
    first_line: int | None = None  # 1-based, in the file as it was read

    def add(self, line_number: int) -> None:
        self.count += 1
        if self.first_line is None:
            self.first_line = line_number

    def describe(self, name: str = METRICS) -> str | None:
        """E.g. "metrics.jsonl: 2 damaged lines were skipped (the first is line 17); ..."; None
        when there are none."""
        if not self.count:
            return None
        lines = "line was" if self.count == 1 else "lines were"
        where = f" (the first is line {self.first_line})" if self.first_line is not None else ""
        return f"{name}: {self.count} damaged {lines} skipped{where}; the other records are shown"


def parse_metrics_line(line: bytes) -> dict[str, Any] | None:
    """The record one line of a metrics file holds, or None when the line is damaged.
    Decoded on its own, strictly, so one bad byte costs one line, not the file."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return record if isinstance(record, dict) else None


def _metrics_lines(path: Path) -> Iterator[tuple[int, bytes, dict[str, Any] | None]]:
    """(line number, the line's bytes with its newline, its record or None) for every
    complete line; the last line without a newline (being written, or cut when the process
    died) is left out. A missing file has no lines; other read errors are raised."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - bytes: a bad byte must not fail the whole file
    except FileNotFoundError:
        return
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                break
            yield number, line, parse_metrics_line(line)  # a blank line reads as None too


def trim_metrics(path: Path, last_step: int, damaged: DamagedLines | None = None) -> int:
    """Keep the records up to ``last_step``: a run resumed from the state saved at that step
    trains the later steps again, and one curve must not hold two versions of them (a
    killed run had recorded some). The lines kept are kept byte for byte, damaged ones
    included (their step cannot be told, and nothing is thrown away unseen; readers go on
    skipping and counting them); the torn last line goes. Rewritten atomically; returns
    the records dropped."""
    if not path.is_file():
        return 0
    kept: list[bytes] = []
    dropped = 0
    for number, line, record in _metrics_lines(path):
        if record is None:
            if damaged is not None and line.strip():
                damaged.add(number)
            kept.append(line)
        elif (step := _record_step(record)) is not None and step > last_step:
            dropped += 1
        else:
            kept.append(line)
    write_bytes_atomic(path, b"".join(kept))
    return dropped


def _record_step(record: dict[str, Any]) -> int | None:
    step = record.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def read_metrics(path: Path, damaged: DamagedLines | None = None) -> Iterator[dict[str, Any]]:
    """Every complete record of a metrics file, as JSON objects. A torn last line is
    ignored; a damaged complete line is skipped and counted in ``damaged`` (blank lines
    are skipped without counting)."""
    for number, line, record in _metrics_lines(path):
        if record is not None:
            yield record
        elif damaged is not None and line.strip():
            damaged.add(number)


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
    # The validation loss (core.training.validation_loss): the last one computed, the lowest
    # and the step of the lowest; None without a validation set (and in older runs).
    validation_loss: float | None = None
    best_validation_loss: float | None = None
    best_validation_step: int | None = None
    # Memory of this run only (core.training.memory): peak_vram_mb is the peak over every phase
    # (allocated on CUDA, RSS on a CPU); peak_reserved_mb the CUDA allocator's reserved peak
    # (None on a CPU); peak_by_phase the peaks of each phase, {"training": {"allocated_mb",
    # "reserved_mb"}} on CUDA, {"training": {"rss_mb"}} on a CPU; memory_method how they were
    # measured ("cuda allocator", "rss high-water mark", "rss sampled"). Absent in older runs.
    peak_reserved_mb: float | None = None
    peak_by_phase: dict[str, dict[str, float]] | None = None
    memory_method: str | None = None
    # The VRAM forecast made when the run started on a CUDA device (core.training.run_forecast):
    # {"peak", "driver", "training_peak" (bytes), "bucket" [w, h], "batch_size"}, or {"error": text}.
    # None on a CPU run (nothing to forecast: its memory is RAM) and in older runs.
    vram_forecast: dict[str, Any] | None = None

    # The process training the run (core.system.processes.this_process), so that a run whose process
    # was killed is not shown as running for ever.
    runner: dict[str, Any] | None = None

    def write(self, run_dir: Path) -> None:
        write_json(run_dir / SUMMARY, self.__dict__)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
