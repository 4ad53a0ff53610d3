"""``lorakiln compare PATH... [--out DIR] [--json]``: compare finished runs.

Each PATH is a run folder or a folder of runs (an output folder). Prints one row per run
with every setting that differs, time, time per step, peak memory (beside the VRAM forecast a
GPU run recorded, and measured / forecast), buckets, batches per epoch and loss; ``--out``
also writes the table as CSV and Markdown and the loss, learning rate and memory plots as
PNG files.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - the imports below load numpy and Pillow: only when run
    from core.studies.run_index import RunRecord


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", metavar="PATH", nargs="+", type=Path,
                        help="a run folder, or a folder of run folders (e.g. an output folder)")
    parser.add_argument("--out", metavar="DIR", type=Path,
                        help="also write comparison.csv, comparison.md and PNG plots into DIR")
    parser.add_argument("--json", action="store_true", help="print the table as one JSON object")


def _json_value(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _gather(paths: list[Path]) -> tuple[list[RunRecord], list[str]]:
    """The runs under every path (in the order given, newest first within a folder), and
    an error for each path that holds none."""
    from core.studies.run_index import discover_runs

    errors: list[str] = []
    records: list[RunRecord] = []
    seen: set[Path] = set()
    for path in paths:
        try:
            path = path.expanduser()
            exists, is_dir = path.exists(), path.is_dir()
        except (OSError, RuntimeError) as error:  # a name too long, an unknown ~user
            errors.append(f"{path}: cannot be looked at ({getattr(error, 'strerror', None) or error}); "
                          "give a run folder or a folder of runs")
            continue
        if not exists:
            errors.append(f"{path}: no such folder")
            continue
        if not is_dir:
            errors.append(f"{path}: not a folder; give a run folder or a folder of runs")
            continue
        found = discover_runs([path])
        if not found:
            errors.append(f"{path}: not a run folder and holds no run folders "
                          "(a run folder holds the config.toml and summary.json a training writes)")
        for record in found:
            if record.path.resolve() not in seen:
                seen.add(record.path.resolve())
                records.append(record)
    return records, errors


def run(args: argparse.Namespace) -> int:
    from core.studies.compare import comparison_table, export_comparison, table_to_text
    from core.studies.run_index import load_series

    records, errors = _gather(list(args.paths))
    for error in errors:
        print(f"lorakiln compare: {error}", file=sys.stderr)
    if errors:
        return 2
    table = comparison_table(records)
    written: list[Path] = []
    notes = {str(r.path): r.problem for r in records if r.problem}
    if args.out is not None:
        if args.out.exists() and not args.out.is_dir():
            print(f"lorakiln compare: {args.out}: exists and is not a folder; choose another --out",
                  file=sys.stderr)
            return 2
        series = [load_series(r.path) for r in records]  # read here too, to tell of damaged metrics
        for record, curves in zip(records, series):
            if curves.note:
                notes[str(record.path)] = record.problem_with(curves.note)
        try:
            written = export_comparison(records, args.out, series)
        except OSError as err:
            print(f"lorakiln compare: cannot write into {args.out}: {err.strerror or err}", file=sys.stderr)
            return 1
    if args.json:
        doc = {"columns": table.columns, "rows": [[_json_value(v) for v in row] for row in table.rows],
               "varied": table.varied, "runs": [str(r.path) for r in records],
               "problems": notes,
               "written": [str(p) for p in written]}
        print(json.dumps(doc, indent=1, ensure_ascii=False))
        return 0
    print(table_to_text(table), end="")
    print()
    if len(records) < 2:
        print("one run: nothing to compare its settings with")
    elif table.varied:
        print("settings that differ: " + ", ".join(table.varied))
    else:
        print("the runs share every setting (output name and folder aside)")
    for path, note in notes.items():
        print(f"note: {path}: {note}")
    for record in records:
        if record.forecast_error:
            print(f"note: {record.path}: its VRAM forecast could not be made ({record.forecast_error})")
    if written:
        print(f"wrote {len(written)} files to {args.out}: " + ", ".join(p.name for p in written))
    return 0
