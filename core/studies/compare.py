"""Comparing runs the way a study does: what differs between them, and what it cost.

The table answers the questions people train several runs for (e.g. one LoRA at 512, 768
and 1024 px): time, time per step, peak memory (and, for runs on a GPU, the VRAM forecast
they recorded and measured / forecast), buckets, batches per epoch and loss, one row per
run, with a column for every setting that differs between the runs.

Settings that always differ and say nothing are left out of the comparison:
``output.output_name`` and ``output.output_dir`` (each run is named and placed apart). The
step count of a run trained by epochs, and the epoch count of one trained by steps, had no
effect and count as "n/a". Seeds are compared like any other setting, since comparing
seeds is a study of its own.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from core.system.atomic import write_bytes_atomic, write_text_atomic
from core.studies.chart import ChartSeries, line_chart, run_colour
from core.studies.run_index import RunRecord, RunSeries, forecast_ratio, load_series

ALWAYS_DIFFERENT = frozenset({"output.output_name", "output.output_dir"})
LEGEND_VALUE_CHARS = 40
_MISSING = object()


class _Ignored:
    """The step count of a run trained by epochs (or the epoch count of one trained by steps):
    set, but without effect, so it must not make two runs look different."""

    def __repr__(self) -> str:
        return "n/a"


IGNORED = _Ignored()
_IGNORED_UNLESS = {"training.max_train_steps": "steps", "training.max_train_epochs": "epochs"}


def param_value(record: RunRecord, key: str) -> object:
    """The value of a setting as far as training was concerned (IGNORED where it had no effect)."""
    value = record.params.get(key, _MISSING)
    needs = _IGNORED_UNLESS.get(key)
    if needs is not None and record.params.get("training.duration", needs) != needs:
        return IGNORED
    return value


def varied_params(records: Sequence[RunRecord]) -> list[str]:
    """The "group.field" keys whose values differ between the runs whose config could be
    read, in schema order; a key some runs lack (a second subset) differs too."""
    readable = [r for r in records if r.config is not None]
    if len(readable) < 2:
        return []
    keys: dict[str, None] = {}
    for record in readable:
        keys.update(dict.fromkeys(record.params))
    varied = []
    for key in keys:
        if key in ALWAYS_DIFFERENT:
            continue
        first = param_value(readable[0], key)
        if any(param_value(r, key) != first for r in readable[1:]):
            varied.append(key)
    return varied


def format_param(key: str, value: object) -> str:
    """A setting's value as the table shows it: resolutions as WxH, enums by name."""
    if value is IGNORED:
        return "n/a"
    if value is _MISSING:
        return "absent"  # e.g. a second subset only some runs have
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        if key.endswith("resolution") and len(value) == 2:
            return f"{value[0]}x{value[1]}"
        if all(isinstance(v, tuple) and len(v) == 2 for v in value):  # extra_args pairs
            return ", ".join(f"{k}={format_param(k, v)}" for k, v in value) or "none"
        return ",".join(format_param(key, v) for v in value)
    if isinstance(value, str):
        return " / ".join(line for line in value.strip().splitlines() if line.strip()) if value else '""'
    return str(value)


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """'dataset.resolution' -> 'resolution', unless two keys would then read the same."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: name if last.count(name) == 1 else key for key, name in zip(keys, last)}


def _legend_value(key: str, value: object) -> str:
    if key.endswith("resolution") and isinstance(value, tuple) and len(value) == 2 and value[0] == value[1]:
        return str(value[0])  # "resolution=768" reads better than 768x768 in a legend
    text = format_param(key, value)
    return text if len(text) <= LEGEND_VALUE_CHARS else text[:LEGEND_VALUE_CHARS - 1] + "…"


def legend_label(record: RunRecord, varied: Sequence[str]) -> str:
    """What tells this run apart, e.g. "resolution=768, dim=16"; the folder name when
    nothing does (or the run's settings are unknown)."""
    if not varied or record.config is None:
        return record.folder
    names = short_names(varied)
    parts = [f"{names[key]}={_legend_value(key, param_value(record, key))}" for key in varied
             if param_value(record, key) is not IGNORED]
    return ", ".join(parts) or record.folder


def legend_labels(records: Sequence[RunRecord], varied: Sequence[str] | None = None) -> list[str]:
    """One label per run, made unique with the folder name where two runs share settings."""
    varied = varied_params(records) if varied is None else varied
    labels = [legend_label(r, varied) for r in records]
    unique = []
    for label, record in zip(labels, records):
        if labels.count(label) > 1:
            label = f"{record.path.parent.name}/{label}" if label == record.folder else f"{label} ({record.folder})"
        unique.append(label)
    return unique


# ---------------------------------------------------------------- the table


@dataclass
class ComparisonTable:
    columns: list[str]
    rows: list[list[object]]  # raw values: numbers stay numbers, None where unknown
    varied: list[str] = field(default_factory=list)


WALL_TIME = "wall time"
FORECAST = "VRAM forecast (MB)"
FORECAST_RATIO = "measured / forecast"
_SECONDS = {WALL_TIME}
VALIDATION_LOSS, BEST_VALIDATION_LOSS = "final validation loss", "best validation loss"
_LOSSES = {"final loss", "last-epoch loss", VALIDATION_LOSS, BEST_VALIDATION_LOSS}
_CSV_HEADERS = {WALL_TIME: "wall time (s)"}


def _memory_name(records: Sequence[RunRecord]) -> str:
    kinds = {r.memory_kind for r in records}
    return "VRAM" if kinds == {"cuda"} else "RAM" if kinds == {"rss"} else "memory"


def memory_column(records: Sequence[RunRecord]) -> str:
    """The run's peak over every phase (loading, caching, training, sampling, saving)."""
    return f"peak {_memory_name(records)} (MB)"


def training_memory_columns(records: Sequence[RunRecord]) -> list[str]:
    """The training phase's peak, and on CUDA the allocator's reserved peak beside it: what a
    resolution costs to train (the run's peak can come from caching latents instead)."""
    name = _memory_name(records)
    if name == "RAM":
        return ["training peak RAM (MB)"]
    used = "training peak VRAM allocated (MB)" if name == "VRAM" else "training peak memory (MB)"
    return [used, "training peak VRAM reserved (MB)"]


def forecast_columns(records: Sequence[RunRecord]) -> list[str]:
    """The VRAM forecast the runs recorded when they started, beside the measured peak, and the
    ratio of the two; left out when no run has one (CPU runs and older runs have none)."""
    if any(r.forecast_mb is not None or r.forecast_error for r in records):
        return [FORECAST, FORECAST_RATIO]
    return []


def validation_columns(records: Sequence[RunRecord]) -> list[str]:
    """The validation loss, the curve to compare runs by, when any run computed one."""
    if any(r.validation_loss is not None for r in records):
        return [VALIDATION_LOSS, BEST_VALIDATION_LOSS]
    return []


def comparison_table(records: Sequence[RunRecord]) -> ComparisonTable:
    varied = varied_params(records)
    training_memory = training_memory_columns(records)
    forecast = forecast_columns(records)
    validation = validation_columns(records)
    columns = ["run", *varied, "status", "steps", "epochs", WALL_TIME, "time per step (s)",
               *training_memory, memory_column(records), *forecast, "resolution", "buckets", "batches/epoch",
               "final loss", "last-epoch loss", *validation]
    rows: list[list[object]] = []
    for record, label in zip(records, legend_labels(records, varied)):
        values = [format_param(key, param_value(record, key)) if record.config else None for key in varied]
        rows.append([label, *values, record.status, record.steps, record.epochs,
                     record.wall_seconds if record.wall_seconds > 0 else None,
                     record.wall_seconds / record.steps if record.steps and record.wall_seconds > 0 else None,
                     *_training_memory(record)[:len(training_memory)],
                     record.peak_memory_mb if record.peak_memory_mb > 0 else None,
                     *[record.forecast_mb, forecast_ratio(record)][:len(forecast)], record.resolution,
                     record.bucket_count, record.batches_per_epoch, record.final_loss, record.last_epoch_loss,
                     *[record.validation_loss, record.best_validation_loss][:len(validation)]])
    return ComparisonTable(columns, rows, varied)


def _training_memory(record: RunRecord) -> list[float | None]:
    reserved = record.training_peak_reserved_mb if record.memory_kind == "cuda" else None
    return [record.training_peak_mb, reserved]


def _duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_cell(column: str, value: object, *, for_csv: bool = False) -> str:
    if value is None:
        return "" if for_csv else "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return "" if for_csv else "–"
    if column in _SECONDS:
        return f"{value:.1f}" if for_csv else _duration(value)
    if column in _LOSSES:
        return f"{value:.6g}" if for_csv else f"{value:.4f}"
    if column == FORECAST_RATIO:
        return f"{value:.4g}" if for_csv else f"{value:.2f}×"
    if column.endswith("(MB)"):
        return f"{value:.1f}" if for_csv else f"{value:.0f}"
    return f"{value:.6g}" if for_csv else f"{value:.3g}"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def table_to_csv(table: ComparisonTable) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([_CSV_HEADERS.get(c, c) for c in table.columns])
    for row in table.rows:
        writer.writerow([format_cell(c, v, for_csv=True) for c, v in zip(table.columns, row)])
    return out.getvalue()


def table_to_text(table: ComparisonTable) -> str:
    """The table as aligned plain text (numbers right-aligned), for a terminal."""
    cells = [[format_cell(c, v) for c, v in zip(table.columns, row)] for row in table.rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(table.columns)]
    numeric = [any(_is_number(row[i]) for row in table.rows) for i in range(len(table.columns))]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(table.columns), line(["-" * w for w in widths]), *map(line, cells)]) + "\n"


def table_to_markdown(table: ComparisonTable, title: str = "Run comparison") -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    numeric = [any(_is_number(row[i]) for row in table.rows) for i in range(len(table.columns))]
    lines = [f"# {title}", "", "| " + " | ".join(cell(c) for c in table.columns) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    for row in table.rows:
        lines.append("| " + " | ".join(cell(format_cell(c, v)) for c, v in zip(table.columns, row)) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- export


def _png(path: Path, image) -> Path:  # noqa: ANN001 - PIL image
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
    return path


def _group_series(label: str, colour: str, curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[ChartSeries]:
    """One line per parameter group; the first solid, the others dashed, and groups that
    follow the first exactly are not drawn again."""
    out: list[ChartSeries] = []
    shown: list[np.ndarray] = []
    for group, (steps, values) in curves.items():
        if any(np.array_equal(values, other, equal_nan=True) for other in shown):
            continue
        shown.append(values)
        out.append(ChartSeries(f"{label} ({group})", steps, values, colour, dashed=bool(out)))
    if len(out) == 1:
        out[0].label = label
    return out


def _memory_label(series: Sequence[RunSeries]) -> str:
    kinds = {s.memory_kind for s in series if s.step.size}
    return "VRAM reserved (MB)" if kinds == {"cuda"} else "RAM in use (MB)" if kinds == {"rss"} else "memory (MB)"


def export_comparison(records: Sequence[RunRecord], out_dir: Path,
                      series: Sequence[RunSeries] | None = None) -> list[Path]:
    """Write comparison.csv, comparison.md and the plots into ``out_dir``; returns the files.
    Each run keeps its colour (by position in ``records``) in every plot. ``series`` are the
    runs' curves when the caller has read them already (to report their notes), one per run."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = comparison_table(records)
    labels = [row[0] for row in table.rows]
    series = list(series) if series is not None else [load_series(r.path) for r in records]
    colours = [run_colour(i) for i in range(len(records))]
    written: list[Path] = []
    csv_path = out_dir / "comparison.csv"
    write_text_atomic(csv_path, table_to_csv(table))
    written.append(csv_path)

    def curve(s: RunSeries) -> np.ndarray:
        return s.avg_loss if np.isfinite(s.avg_loss).any() else s.loss

    plots: dict[str, object] = {
        "loss_by_step.png": line_chart(
            [ChartSeries(l, s.step, curve(s), c) for l, s, c in zip(labels, series, colours)],
            "Loss by step (average over the last epoch's steps)", "step", "loss"),
        "loss_by_epoch.png": line_chart(
            [ChartSeries(l, s.epoch, s.epoch_loss, c) for l, s, c in zip(labels, series, colours)],
            "Mean loss by epoch", "epoch", "mean loss"),
        "lr_by_step.png": line_chart(
            [x for l, s, c in zip(labels, series, colours) for x in _group_series(l, c, s.lr)],
            "Learning rate by step", "step", "learning rate", log_y=True),
    }
    if any(s.validation[0].size for s in series):
        plots["validation_loss_by_step.png"] = line_chart(
            [ChartSeries(l, *s.validation, c) for l, s, c in zip(labels, series, colours) if s.validation[0].size],
            "Validation loss by step (fixed timesteps and noise)", "step", "validation loss")
    if any(s.dlr for s in series):
        plots["dlr_by_step.png"] = line_chart(
            [x for l, s, c in zip(labels, series, colours) for x in _group_series(l, c, s.dlr)],
            "Effective learning rate d*lr by step (Prodigy, D-Adaptation)", "step", "d*lr", log_y=True)
    plots["memory_by_step.png"] = line_chart(
        [ChartSeries(l, *s.memory, c) for l, s, c in zip(labels, series, colours)],
        "Memory by step", "step", _memory_label(series))
    for name, image in plots.items():
        written.append(_png(out_dir / name, image))
    md_path = out_dir / "comparison.md"
    write_text_atomic(md_path, _markdown_report(records, series, table, labels, list(plots)))
    written.insert(1, md_path)
    return written


def _markdown_report(records: Sequence[RunRecord], series: Sequence[RunSeries], table: ComparisonTable,
                     labels: list[str], plots: list[str]) -> str:
    lines = [table_to_markdown(table).rstrip(), ""]
    if len(records) < 2:
        lines.append("Only one run: nothing to compare its settings with.")
    elif table.varied:
        lines.append("Settings that differ between the runs: " + ", ".join(f"`{k}`" for k in table.varied) + ".")
    else:
        lines.append("The runs share every setting (output name and folder aside).")
    lines += ["", "## Runs", ""]
    for label, record, curves in zip(labels, records, series):
        problem = record.problem_with(curves.note)
        note = f"; {problem}" if problem else ""
        note += f"; failed: {record.error}" if record.error and record.status == "failed" else ""
        note += f"; no VRAM forecast: {record.forecast_error}" if record.forecast_error else ""
        lines.append(f"- **{label}**: `{record.path}` ({record.status}{note})")
    lines += ["", "## Plots", ""]
    lines += [f"![{name[:-4].replace('_', ' ')}]({name})" for name in plots]
    return "\n".join(lines) + "\n"
