"""``lorakiln gui [PRESET]``: open the desktop app (what plain ``lorakiln`` does)."""

from __future__ import annotations

import argparse
import importlib


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("preset", nargs="?", default=None,
                        help="preset file or built-in preset name to open (default: the demo project)")


def run(args: argparse.Namespace) -> int:
    # Imported by name so that core never imports Qt itself: only this entry point
    # reaches into the front end, and only when the front end is asked for.
    app = importlib.import_module("gui.app")
    return app.run(args.preset)
