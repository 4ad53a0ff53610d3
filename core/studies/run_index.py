"""The runs library: find run folders, read what each one holds, and load its curves.

A run folder is what the engine writes (see :mod:`core.training.run_folder` for the layout). Reading one
never raises: a run whose config or summary cannot be read, or holds values of the wrong
type or size (an edited or damaged file), still appears, with ``problem`` saying which
file is at fault, so a crashed or half-copied run is visible instead of silently missing
from a comparison, and one damaged run never takes the listing of the others down.
"""

from __future__ import annotations

import enum
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from core.config.schema import TrainConfig
from core.config.presets import PresetError, config_fields, load_preset
from core.system.processes import GONE, process_state
from core.training.run_folder import CONFIG, METRICS, PLAN, SUMMARY, DamagedLines, parse_metrics_line, read_metrics

CHECKPOINT_DIR = "checkpoints"  # as core.training.checkpoint names it (not imported: that pulls in torch)
STATE_DIR = "state"
# Training state files as the engine has named them: step-00000500.pt, and the newer
# step-00000500.safetensors.
_STATE_FILE = re.compile(r"^step-(\d+)\.(?:pt|safetensors)$")
SAMPLE_DIR = "samples"
SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# A running or crashed run has no final numbers in its summary yet; they are taken from the
# end of metrics.jsonl, reading at most this much of it so a long run stays quick to list.
TAIL_BYTES = 1 << 20
_FOLDER_STAMP = re.compile(r"^(\d{8}-\d{6})")
_EPOCH_CHECKPOINT = re.compile(r"-(\d{6})\.safetensors$")
_STEP_CHECKPOINT = re.compile(r"-step(\d{8})\.safetensors$")
# Counts (steps, epochs, buckets) above this come from a damaged file, not a training; the
# bound keeps them exact as floats and inside numpy's int64.
MAX_COUNT = 2**53
MEMORY_KINDS = ("cuda", "rss")
MB = 1024 * 1024  # the measured peaks' unit (core.training.memory), not imported: that pulls in torch
FORECAST_ERROR_CHARS = 300


@dataclass
class RunRecord:
    path: Path
    name: str  # output_name from the config, else the folder name
    folder: str
    started_at: float | None = None
    status: str = "incomplete"  # completed, stopped, cancelled, failed, running, interrupted, incomplete
    config: TrainConfig | None = None
    problem: str | None = None  # why the config or summary could not be read, naming the file
    params: dict[str, object] = field(default_factory=dict)  # "group.field" -> value
    steps: int = 0
    total_steps: int = 0
    epochs: int = 0
    total_epochs: int = 0
    wall_seconds: float = 0.0
    peak_memory_mb: float = 0.0  # the run's peak over every phase (allocated on CUDA)
    memory_kind: str = "rss"  # "cuda" (VRAM) or "rss" (process memory of a CPU run)
    # The training phase's peaks (allocated on CUDA, RSS on a CPU; reserved on CUDA only) and
    # the run's reserved peak; None where the run did not record them (older runs).
    training_peak_mb: float | None = None
    training_peak_reserved_mb: float | None = None
    peak_reserved_mb: float | None = None
    # The VRAM forecast the run recorded when it started on a CUDA device (summary.vram_forecast,
    # core.training.run_forecast), in MB like the measured peaks: the tensors' peak (what
    # peak_memory_mb measures on CUDA) and the figure the driver was expected to show; the
    # reason when the forecast could not be made. None on CPU runs and in older runs.
    forecast_mb: float | None = None
    forecast_driver_mb: float | None = None
    forecast_error: str | None = None
    final_loss: float | None = None
    last_epoch_loss: float | None = None
    # The validation loss (summary.json): the last one computed and the lowest; None without a
    # validation set and in older runs.
    validation_loss: float | None = None
    best_validation_loss: float | None = None
    resolution: str | None = None  # "512x512"
    bucket_count: int | None = None
    batches_per_epoch: int | None = None
    images: int | None = None
    lora_path: Path | None = None
    checkpoints: list[Path] = field(default_factory=list)
    samples: list[Path] = field(default_factory=list)
    error: str | None = None  # the failure summary of a failed run
    skipped_steps: int = 0  # steps left out for a NaN/inf loss
    # The damaged lines met in the part of metrics.jsonl read for the list (its end, for a run
    # without final numbers); also part of ``problem``. A reader of the whole file (the
    # curves) has the full count and says it instead: see ``problem_with``.
    metrics_note: str | None = None

    def problem_with(self, series_note: str | None) -> str | None:
        """``problem``, with the note of the run's curves (``RunSeries.note``) in place of
        the list's partial note on the same metrics file."""
        if not series_note:
            return self.problem
        if self.metrics_note and self.problem and self.metrics_note in self.problem:
            return self.problem.replace(self.metrics_note, series_note)
        return "; ".join(filter(None, (self.problem, series_note)))


def is_run_dir(path: Path) -> bool:
    """A folder the engine wrote: it has a summary, or a config beside a plan or metrics
    (a lone config.toml could be anyone's preset, so it does not count)."""
    path = Path(path)
    try:
        if not path.is_dir():
            return False
        if (path / SUMMARY).is_file():
            return True
        return (path / CONFIG).is_file() and ((path / PLAN).is_file() or (path / METRICS).is_file())
    except OSError:  # a folder we may not look into
        return False


def _plain_param(value: Any) -> object:
    """A config value as the runs library compares it: enums by value, lists as tuples."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return tuple(_plain_param(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _plain_param(v)) for k, v in value.items()))
    return value


def flatten_params(config: TrainConfig) -> dict[str, object]:
    return {key: _plain_param(value) for key, value in config_fields(config).items()}


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"{path.name} is missing"
    except (OSError, UnicodeDecodeError) as err:
        return None, f"{path.name} cannot be read: {getattr(err, 'strerror', None) or err}"
    except ValueError as err:
        return None, f"{path.name} is not valid JSON ({err})"
    except RecursionError:
        return None, f"{path.name} is not a file the engine wrote: its values are nested too deeply to read"
    if not isinstance(data, dict):
        return None, f"{path.name} does not hold a JSON object"
    return data, None


def _number(data: dict[str, Any], key: str) -> float | None:
    """A finite number, or None for anything else (text, lists, NaN, a whole number too
    large for a float)."""
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _count(data: dict[str, Any], key: str) -> int | None:
    """A whole number from 0 to MAX_COUNT (4.0 counts as 4), or None."""
    number = _number(data, key)
    if number is None or not 0 <= number <= MAX_COUNT:
        return None
    return int(number)


def _timestamp(data: dict[str, Any], key: str) -> float | None:
    """A time the clock functions accept (the list shows it as a date), or None."""
    number = _number(data, key)
    if not number:
        return None
    try:
        time.localtime(number)
    except (OverflowError, OSError, ValueError):
        return None
    return number


def _memory_kind(value: Any, default: str) -> str:
    return value if value in MEMORY_KINDS else default


def _is_file(path: Path) -> bool:
    """Path.is_file that says False where the name itself is impossible (too long for the
    file system, a NUL byte: a damaged summary can hold either) instead of raising."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def saved_states(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, file) of each training state saved in the run folder, oldest first: what
    ``lorakiln train --resume`` continues from. Empty when there is none (the run was
    killed before its first save, or trained without output.save_state)."""
    try:
        found = [(int(match.group(1)), entry) for entry in (Path(run_dir) / STATE_DIR).iterdir()
                 if (match := _STATE_FILE.match(entry.name)) and _is_file(entry)]
    except (OSError, ValueError):
        return []
    return sorted(found)


def _tail_records(path: Path, damaged: DamagedLines | None = None) -> list[dict[str, Any]]:
    """The complete records in the last TAIL_BYTES of a metrics file, oldest first; the
    damaged lines among them are counted in ``damaged`` (without line numbers: where the
    tail starts in the file is not counted)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - TAIL_BYTES))
            data = handle.read()
    except OSError:
        return []
    lines = data.split(b"\n")
    if size > TAIL_BYTES:
        lines = lines[1:]  # the first line was cut by the seek
    records = []
    for line in lines[:-1]:  # the last piece has no newline: empty, or torn by a crash
        record = parse_metrics_line(line)
        if record is not None:
            records.append(record)
        elif damaged is not None and line.strip():
            damaged.count += 1
    return records


def _fill_from_metrics(record: RunRecord) -> str | None:
    """Progress of a run whose summary has no final numbers (still running, or killed);
    returns a note on the damaged lines met, if any."""
    damaged = DamagedLines()
    tail = _tail_records(record.path / METRICS, damaged)
    last_step = next((r for r in reversed(tail) if r.get("type") == "step"), None)
    last_epoch = next((r for r in reversed(tail) if r.get("type") == "epoch"), None)
    if last_step is not None:
        record.steps = max(record.steps, _count(last_step, "step") or 0)
        record.epochs = max(record.epochs, _count(last_step, "epoch") or 0)
        record.wall_seconds = max(record.wall_seconds, _number(last_step, "elapsed_s") or 0.0)
        # memory_run_peak_mb is the run's peak; older records have only memory_peak_mb
        run_peak = _number(last_step, "memory_run_peak_mb")
        record.peak_memory_mb = max(record.peak_memory_mb, run_peak or _number(last_step, "memory_peak_mb") or 0.0)
        record.memory_kind = _memory_kind(last_step.get("memory_kind"), record.memory_kind)
        if run_peak is not None:  # then memory_peak_mb is the training phase's peak
            record.training_peak_mb = _larger(record.training_peak_mb, _number(last_step, "memory_peak_mb"))
            if record.memory_kind == "cuda":
                record.training_peak_reserved_mb = _larger(record.training_peak_reserved_mb,
                                                           _number(last_step, "memory_peak_reserved_mb"))
        record.final_loss = _number(last_step, "loss")
    if last_epoch is not None and record.last_epoch_loss is None:
        record.last_epoch_loss = _number(last_epoch, "mean_loss")
    if not damaged.count:
        return None
    lines = "line was" if damaged.count == 1 else "lines were"
    return f"{damaged.count} damaged {lines} skipped near the end of {METRICS}; the other records are used"


def _apply_summary(record: RunRecord, summary: dict[str, Any]) -> None:
    """The summary's values; one of the wrong type or size (an edited or damaged file) is
    read as absent rather than failing the run."""
    status = summary.get("status")
    record.status = status if isinstance(status, str) and status else "incomplete"
    for key in ("steps", "total_steps", "epochs", "total_epochs"):
        setattr(record, key, _count(summary, key) or 0)
    record.wall_seconds = _number(summary, "wall_seconds") or 0.0
    record.peak_memory_mb = _number(summary, "peak_vram_mb") or 0.0
    record.memory_kind = _memory_kind(summary.get("memory_kind"), "cuda")
    _apply_phase_peaks(record, summary)
    _apply_forecast(record, summary)
    record.final_loss = _number(summary, "final_loss")
    record.last_epoch_loss = _number(summary, "mean_last_epoch_loss")
    record.validation_loss = _number(summary, "validation_loss")
    record.best_validation_loss = _number(summary, "best_validation_loss")
    record.started_at = _timestamp(summary, "started_at")
    record.error = summary.get("error") if isinstance(summary.get("error"), str) else None
    record.skipped_steps = _count(summary, "skipped_steps") or 0  # absent in older runs
    lora = summary.get("lora_path")
    if isinstance(lora, str) and lora:
        # The folder may have been moved or copied since: look beside the summary first.
        for candidate in (record.path / Path(lora).name, Path(lora)):
            if _is_file(candidate):
                record.lora_path = candidate
                break


def _larger(first: float | None, second: float | None) -> float | None:
    return second if first is None else first if second is None else max(first, second)


def _apply_phase_peaks(record: RunRecord, summary: dict[str, Any]) -> None:
    """The training phase's peaks from summary.peak_by_phase (absent in older runs; a value of
    the wrong type is read as absent)."""
    cuda = record.memory_kind == "cuda"
    record.peak_reserved_mb = _number(summary, "peak_reserved_mb") if cuda else None
    phases = summary.get("peak_by_phase")
    training = phases.get("training") if isinstance(phases, dict) else None
    if not isinstance(training, dict):
        return
    record.training_peak_mb = _number(training, "allocated_mb" if cuda else "rss_mb")
    record.training_peak_reserved_mb = _number(training, "reserved_mb") if cuda else None


def _megabytes(data: dict[str, Any], key: str) -> float | None:
    """A size in bytes as MB (MiB, as the measured peaks), or None unless a positive number."""
    number = _number(data, key)
    return number / MB if number is not None and number > 0 else None


def _apply_forecast(record: RunRecord, summary: dict[str, Any]) -> None:
    """summary.vram_forecast (absent in CPU and older runs; a value of the wrong type is read as
    absent, a damaged error text is cut to a line)."""
    forecast = summary.get("vram_forecast")
    if not isinstance(forecast, dict):
        return
    record.forecast_mb = _megabytes(forecast, "peak")
    record.forecast_driver_mb = _megabytes(forecast, "driver")
    error = forecast.get("error")
    if isinstance(error, str) and error.strip():
        record.forecast_error = " ".join(error.split())[:FORECAST_ERROR_CHARS]


def forecast_ratio(record: RunRecord) -> float | None:
    """Measured peak / forecast peak, both tensor memory on the GPU (torch's allocated figure
    against the forecast's tensors); None unless both exist and the run measured VRAM (a CPU
    run's peak is the process's RAM: no ratio to a GPU forecast means anything)."""
    if record.memory_kind != "cuda" or not record.forecast_mb or record.peak_memory_mb <= 0:
        return None
    return record.peak_memory_mb / record.forecast_mb


def _apply_plan(record: RunRecord, plan: dict[str, Any]) -> None:
    buckets, images = plan.get("buckets"), plan.get("images")
    record.bucket_count = len(buckets) if isinstance(buckets, list) else None
    record.images = len(images) if isinstance(images, list) else None
    record.batches_per_epoch = _count(plan, "batches_per_epoch")
    if not record.total_steps:
        record.total_steps = _count(plan, "max_train_steps") or 0
    if not record.total_epochs:
        record.total_epochs = _count(plan, "epochs") or 0


def _checkpoint_order(path: Path, steps_per_epoch: float | None) -> tuple[float, str]:
    """Intermediate checkpoints in training order: epoch ones are placed by the step their
    epoch ends at, so epoch and step checkpoints of one run interleave correctly."""
    step = _STEP_CHECKPOINT.search(path.name)
    if step:
        return float(step.group(1)), path.name
    epoch = _EPOCH_CHECKPOINT.search(path.name)
    if epoch:
        return int(epoch.group(1)) * (steps_per_epoch or 1.0), path.name
    return math.inf, path.name


def _list_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes]
    except OSError:
        return []


def interrupted_advice(record: RunRecord) -> str:
    """What to do with a run whose training process ended without finishing: resume it when
    it saved a training state, else train it again from its settings (resuming a folder
    with no state fails: there is nothing to continue from)."""
    ended = "the process training it ended without finishing"
    states = saved_states(record.path)
    if states:
        return (f"{ended}; continue it with lorakiln train --resume \"{record.path}\" "
                f"(it resumes from the state saved at step {states[-1][0]})")
    if record.config is None:
        return f"{ended} before saving a training state, and its settings cannot be read: it cannot be resumed"
    return (f"{ended} before saving a training state ({STATE_DIR}/ holds none), so it cannot be resumed; "
            f"train it again from its settings with lorakiln train \"{record.path / CONFIG}\" "
            f"(a new run folder is made; turn on output.save_state to be able to resume next time)")


def load_run(path: Path) -> RunRecord:
    """Everything a run folder tells; never raises (``problem`` says what was unreadable)."""
    path = Path(path)
    try:
        return _load_run(path)
    except Exception as error:  # noqa: BLE001 - the promise above; one run must not hide the others
        # Reached only by a case the readers below do not foresee: say so plainly, with
        # the error, so the run still shows and the case can be reported.
        record = RunRecord(path=path, name=path.name, folder=path.name)
        record.problem = (f"{path}: this run folder could not be read ({type(error).__name__}: {error}); "
                          f"check its {SUMMARY}, {CONFIG} and {METRICS}")
        return record


def _load_run(path: Path) -> RunRecord:
    record = RunRecord(path=path, name=path.name, folder=path.name)
    problems: list[str] = []
    try:
        record.config = load_preset(path / CONFIG).config
    except PresetError as err:
        missing = not (path / CONFIG).exists()
        problems.append(f"{CONFIG} is missing, so the run's settings are unknown" if missing
                        else str(err).replace("\n", " "))
    except (OSError, ValueError, TypeError) as err:  # a preset problem not put into words
        problems.append(f"{path / CONFIG}: cannot be read ({err})")
    if record.config is not None:
        record.name = record.config.output.output_name or path.name
        record.params = flatten_params(record.config)
        width, height = record.config.dataset.resolution
        record.resolution = f"{width}x{height}"
    summary, problem = _read_json(path / SUMMARY)
    if summary is not None:
        _apply_summary(record, summary)
        if record.status == "running" and process_state(summary.get("runner")) == GONE:
            # Its process was killed or crashed: the summary was never rewritten.
            record.status = "interrupted"
            problems.append(interrupted_advice(record))
    elif record.config is not None:
        problems.append(f"{problem}: the run ended before writing it, or is still starting")
    else:
        problems.append(problem or "")
    plan, _ = _read_json(path / PLAN)
    if plan is not None:
        _apply_plan(record, plan)
    if record.status in ("running", "interrupted", "incomplete"):
        record.metrics_note = _fill_from_metrics(record)
        problems.append(record.metrics_note or "")
    if record.started_at is None:
        stamp = _FOLDER_STAMP.match(path.name)
        if stamp:
            try:
                record.started_at = time.mktime(time.strptime(stamp.group(1), "%Y%m%d-%H%M%S"))
            except (ValueError, OverflowError):
                pass
    if record.lora_path is None and _is_file(path / f"{record.name}.safetensors"):
        record.lora_path = path / f"{record.name}.safetensors"
    steps_per_epoch = record.total_steps / record.total_epochs if record.total_epochs else None
    record.checkpoints = sorted(_list_files(path / CHECKPOINT_DIR, (".safetensors",)),
                                key=lambda p: _checkpoint_order(p, steps_per_epoch))
    record.samples = sorted(_list_files(path / SAMPLE_DIR, SAMPLE_SUFFIXES), key=lambda p: p.name)
    record.problem = "; ".join(p for p in problems if p) or None
    return record


def _expand_user(path: Path) -> Path:
    try:
        return path.expanduser()
    except RuntimeError:  # "~someone" who has no home folder here: the name is taken as it is
        return path


def discover_runs(folders: Iterable[Path]) -> list[RunRecord]:
    """The runs in each folder (its run sub-folders, or the folder itself when it is a run),
    newest first; a folder that does not exist contributes nothing."""
    seen: set[Path] = set()
    records: list[RunRecord] = []
    for folder in folders:
        folder = _expand_user(Path(folder))
        if is_run_dir(folder):
            candidates = [folder]
        else:
            try:
                candidates = sorted(p for p in folder.iterdir() if is_run_dir(p))
            except OSError:  # missing, not a folder, or unreadable
                continue
        for candidate in candidates:
            try:
                key = candidate.resolve()
            except (OSError, RuntimeError):  # a link loop: the folder still lists, by its own name
                key = candidate.absolute()
            if key not in seen:
                seen.add(key)
                records.append(load_run(candidate))
    records.sort(key=lambda r: (r.started_at if r.started_at is not None else -math.inf, r.folder), reverse=True)
    return records


# ---------------------------------------------------------------- curves


Curve = tuple[np.ndarray, np.ndarray]  # (steps, values)


@dataclass
class RunSeries:
    """A run's curves as arrays, for plots. Loss values are NaN where a step logged none."""

    step: np.ndarray
    loss: np.ndarray
    avg_loss: np.ndarray  # mean over the last epoch's worth of steps (Kohya's loss/average)
    epoch: np.ndarray  # epoch number of each epoch-end record
    epoch_end_step: np.ndarray
    epoch_loss: np.ndarray
    lr: dict[str, Curve]  # per parameter group ("unet", "text_encoder")
    dlr: dict[str, Curve]  # d * lr per group (Prodigy, D-Adaptation); empty otherwise
    memory: Curve  # memory reserved on the GPU, or the process's RSS on a CPU run
    memory_kind: str = "rss"
    # The validation loss at each step it was computed (empty without a validation set).
    validation: Curve = field(default_factory=lambda: (np.zeros(0, np.int64), np.zeros(0, np.float64)))
    damaged_lines: int = 0  # lines of metrics.jsonl skipped as unreadable (see core.training.run_folder.DamagedLines)
    note: str | None = None  # for a person: why curves may be missing points, or missing altogether


def _float(value: Any) -> float:
    """A plotted value: NaN (a gap) for anything but a number a float can hold."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    try:
        return float(value)
    except OverflowError:  # a whole number beyond the float range
        return math.nan


def _last_of_each_step(steps: np.ndarray, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """A resumed run appends steps it had logged before it stopped: keep the later record of
    each step, in step order."""
    if steps.size < 2 or bool(np.all(np.diff(steps) > 0)):
        return (steps, *columns)
    reversed_steps = steps[::-1]
    _, first_in_reverse = np.unique(reversed_steps, return_index=True)
    keep = steps.size - 1 - first_in_reverse  # np.unique sorts by step
    return (steps[keep], *(c[keep] for c in columns))


def _step_count(value: Any) -> int | None:
    """A step or epoch number as a curve can hold it (int64), or None."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        return None
    return value


# Runs written before the parameter group was renamed call it by Kohya's log tag.
_OLD_GROUP_NAMES = {"textencoder": "text_encoder"}


def _groups_of(record: dict[str, Any], key: str) -> dict[str, Any]:
    values = record.get(key)
    if not isinstance(values, dict):
        return {}
    if any(name in values for name in _OLD_GROUP_NAMES):
        return {_OLD_GROUP_NAMES.get(name, name): value for name, value in values.items()}
    return values


def _group_curves(records: list[dict[str, Any]], steps: np.ndarray, key: str) -> dict[str, Curve]:
    """Per-group curves of the ``key`` dicts ("lr", "dlr") of step records."""
    groups: dict[str, None] = {}
    for record in records:
        values = _groups_of(record, key)
        if values:  # usually the same groups every step: this loop is cheap
            groups.update(dict.fromkeys(values))
    out: dict[str, Curve] = {}
    for group in groups:
        values = np.fromiter((_float(_groups_of(r, key).get(group)) for r in records), np.float64, len(records))
        present = ~np.isnan(values)
        out[group] = _last_of_each_step(steps[present], values[present])  # type: ignore[assignment]
    return out


def load_series(path: Path) -> RunSeries:
    """A run's curves from its metrics.jsonl (a torn last line is ignored, damaged lines are
    skipped and counted, records with values of the wrong type left out; a file that cannot
    be read gives empty curves and a ``note``). A 100k-step run reads in about a second:
    parsing the JSON lines is most of it."""
    records: list[dict[str, Any]] = []
    epochs: list[tuple[int, int, float]] = []
    validation: list[tuple[int, float]] = []
    damaged = DamagedLines()
    note: str | None = None
    try:
        for record in read_metrics(Path(path) / METRICS, damaged):
            what = record.get("type")
            if what == "step":
                if _step_count(record.get("step")) is not None:
                    records.append(record)
            elif what == "epoch" and (epoch := _step_count(record.get("epoch"))) is not None:
                epochs.append((epoch, _step_count(record.get("step")) or 0, _float(record.get("mean_loss"))))
            elif what == "validation" and (at := _step_count(record.get("step"))) is not None:
                validation.append((at, _float(record.get("loss"))))
    except (OSError, ValueError) as error:  # unreadable (permissions, a disk error), or an impossible name
        note = f"{Path(path) / METRICS} cannot be read ({getattr(error, 'strerror', None) or error}): no curves"
        records, epochs, validation = [], [], []
    note = note or damaged.describe()
    count = len(records)
    steps = np.fromiter((r["step"] for r in records), np.int64, count)

    def column(key: str) -> np.ndarray:
        return np.fromiter((_float(r.get(key)) for r in records), np.float64, count)

    kind = next((r["memory_kind"] for r in records if r.get("memory_kind") in MEMORY_KINDS), "rss")
    lr, dlr = _group_curves(records, steps, "lr"), _group_curves(records, steps, "dlr")
    step_array, loss, avg_loss, memory = _last_of_each_step(
        steps, column("loss"), column("avg_loss"), column("memory_reserved_mb"))
    epoch_numbers, epoch_steps, epoch_losses = _last_of_each_step(
        np.asarray([e[0] for e in epochs], dtype=np.int64), np.asarray([e[1] for e in epochs], dtype=np.int64),
        np.asarray([e[2] for e in epochs], dtype=np.float64))
    return RunSeries(step=step_array, loss=loss, avg_loss=avg_loss, epoch=epoch_numbers,
                     epoch_end_step=epoch_steps, epoch_loss=epoch_losses, lr=lr, dlr=dlr,
                     memory=(step_array, memory), memory_kind=kind, damaged_lines=damaged.count, note=note,
                     validation=(np.asarray([v[0] for v in validation], dtype=np.int64),
                                 np.asarray([v[1] for v in validation], dtype=np.float64)))
