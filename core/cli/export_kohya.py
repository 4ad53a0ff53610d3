"""``lorakiln export-kohya PRESET [-o DIR] [--set ...]``: the same training for sd-scripts.

Writes config.toml (train_network.py --config_file), dataset.toml (its --dataset_config,
which config.toml already names) and prompts.txt when there are sample prompts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.cli.check import add_preset_arguments, load_with_overrides
from core.config.presets import PresetError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_preset_arguments(parser)
    parser.add_argument("-o", "--output-dir", metavar="DIR", default=".",
                        help="folder to write config.toml, dataset.toml and prompts.txt into "
                             "(default: the current folder)")


def run(args: argparse.Namespace) -> int:
    from core.kohya.export import KohyaExportError, build_export, write_export

    try:
        loaded = load_with_overrides(args)
    except PresetError as err:
        print(err, file=sys.stderr)
        return 2
    out_dir = Path(args.output_dir)
    try:
        exported = build_export(loaded.config, out_dir)
    except KohyaExportError as err:
        print(f"lorakiln export-kohya: {err}", file=sys.stderr)
        return 2
    try:
        written = write_export(exported, out_dir)
    except OSError as err:
        print(f"lorakiln export-kohya: cannot write into {out_dir}: {err.strerror or err}", file=sys.stderr)
        return 2
    for note in exported.notes:
        print(f"note: {note}", file=sys.stderr)
    for path in written:
        print(f"wrote {path}")
    print(f"run in sd-scripts: accelerate launch train_network.py --config_file {written[0].resolve()}")
    return 0
