"""``lorakiln inspect LORA.safetensors [--json]``: what a LoRA file holds and how it was trained
(gathered by :mod:`core.kohya.lora_info`)."""

from __future__ import annotations

import argparse
import json
import sys

from core.kohya.lora_info import InspectError, format_inspection, inspect_lora


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("lora", metavar="LORA", help="a LoRA file (.safetensors, or a pickle-free .pt)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    try:
        info = inspect_lora(args.lora)
    except InspectError as err:
        print(f"lorakiln inspect: {err}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(info, sys.stdout, ensure_ascii=False, indent=1)
        print()
    else:
        print(format_inspection(info))
    return 0
