"""``lorakiln import-kohya FILE [FILE2] [-o PRESET.toml]``: a Kohya config as a LoRA Kiln preset.

The preset goes to stdout (or the -o file); the report of what was mapped, what is not
supported and what was ignored goes to stderr, so ``> preset.toml`` stays a clean preset.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.kohya.import_common import ImportResult, KohyaImportError, Mapped, Unsupported
from core.kohya.import_config import import_kohya
from core.kohya.option_effects import what_it_does
from core.config.presets import dumps_preset, save_preset
from core.training.validation import validate

_WIDTH = 44  # widest value shown; long prompts and paths are cut with an ellipsis


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE",
                        help="a kohya_ss GUI JSON, an sd-scripts config TOML (--config_file) or an "
                             "sd-scripts dataset config TOML (--dataset_config)")
    parser.add_argument("file2", metavar="FILE2", nargs="?",
                        help="the dataset config that goes with the config, or the config that goes "
                             "with the dataset config")
    parser.add_argument("-o", "--output", metavar="PRESET.toml",
                        help="save the preset to this file instead of printing it")


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)
    return text if len(text) <= _WIDTH else text[: _WIDTH - 1] + "…"


def _table(rows: Sequence[tuple[str, str, str]], indent: str = "  ") -> list[str]:
    if not rows:
        return []
    key_width = min(max(len(r[0]) for r in rows), 40)
    value_width = max(len(r[1]) for r in rows)
    return [f"{indent}{k:<{key_width}}  {v:<{value_width}}  {t}".rstrip() for k, v, t in rows]


def format_report(result: ImportResult, summary: bool = True) -> str:
    """The import report: mapped, not supported (with what each would have done), ignored
    (grouped by reason), warnings, and last the counts on one line."""
    lines = ["read " + "; ".join(f"{Path(path).name} ({kind})" for path, kind in result.sources)]
    mapped: list[Mapped] = sorted(result.mapped, key=lambda m: m.field)
    lines.append(f"mapped ({len(mapped)}):")
    lines += _table([(m.key, _shown(m.value), "-> " + m.field) for m in mapped])
    lines.append(f"NOT SUPPORTED ({len(result.unsupported)}):" if result.unsupported
                 else "not supported: none")
    for row, item in zip(_table([(u.key, _shown(u.value), u.reason) for u in result.unsupported]),
                         result.unsupported):
        lines.append(row)
        effect = what_it_does(item.key)
        if effect:  # what the run loses: the reason alone does not say what the key did
            lines.append(f"      would have: {effect}")
    if result.ignored:
        lines.append(f"ignored ({len(result.ignored)}), by reason:")
        groups: dict[str, list[Unsupported]] = {}
        for item in result.ignored:
            groups.setdefault(item.reason, []).append(item)
        for reason, items in groups.items():
            lines.append(textwrap.fill(f"{reason}: " + ", ".join(i.key for i in items), width=100,
                                       initial_indent="  ", subsequent_indent="      ",
                                       break_on_hyphens=False))
    if result.warnings:
        lines.append("warnings:")
        lines += [f"  {warning}" for warning in result.warnings]
    if summary:
        lines.append(result.summary())
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    files = [Path(args.file)] + ([Path(args.file2)] if args.file2 else [])
    try:
        result = import_kohya(files)
    except KohyaImportError as err:
        print(f"lorakiln import-kohya: {err}", file=sys.stderr)
        return 2
    print(format_report(result, summary=False), file=sys.stderr)
    # The files may name paths of another machine, so only the settings themselves are checked.
    problems = validate(result.config, check_paths=False)
    if problems:
        print("check of the imported settings:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem.severity}: {problem}", file=sys.stderr)
    description = "imported from " + ", ".join(f.name for f in files)
    if args.output:
        try:
            save_preset(result.config, args.output, description=description)
        except OSError as err:
            print(f"lorakiln import-kohya: cannot write {args.output}: {err.strerror or err}", file=sys.stderr)
            return 2
        print(f"saved {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(dumps_preset(result.config, description=description))
    print(result.summary(), file=sys.stderr)  # the last line: what a glance at the end needs
    return 0
