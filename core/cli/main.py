"""The ``lorakiln`` command: the desktop app with no arguments, or a headless subcommand."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

from core import __version__

# Each entry: (module, one-line help). A module provides `add_arguments(parser)` and
# `run(args) -> int`. Imports happen only for the subcommand that runs, so `lorakiln
# --help` and the GUI's start stay fast.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "check": ("core.cli.check", "validate a preset (with --set overrides) and print the result"),
    "compare": ("core.cli.compare", "compare finished runs: table of what differs, time, memory, loss; export plots and CSV"),
    "export-kohya": ("core.cli.export_kohya", "write a preset as sd-scripts config and dataset config TOMLs"),
    "grid": ("core.cli.grid", "generate a labelled image grid: runs or checkpoints by prompts, seeds or sizes"),
    "gui": ("core.cli.gui", "open the desktop app, optionally on a preset"),
    "import-kohya": ("core.cli.import_kohya", "turn a kohya_ss JSON or sd-scripts TOML config into a preset"),
    "inspect": ("core.cli.inspect", "show what a LoRA file holds and how it was trained"),
    "plan": ("core.cli.plan", "show the buckets, batches and steps a dataset trains with"),
    "queue": ("core.cli.queue", "list, add to, reorder and run the training queue, headless"),
    "sweep": ("core.cli.sweep", "train one run per value of a parameter and compare them"),
    "train": ("core.cli.train", "train a LoRA from a preset, headless (Ctrl+C stops and saves)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorakiln",
        description="LoRA Kiln trains Stable Diffusion LoRAs and shows what the training does. "
                    "With no command it opens the desktop app on the built-in demo project.",
    )
    parser.add_argument("--version", action="version", version=f"LoRA Kiln {__version__}")
    parser.add_argument("--self-test", action="store_true",
                        help="check this installation without a window: train the demo model a few steps "
                             "into a temporary folder, print one line, exit 0 when it worked")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        _module(module_name).add_arguments(sub)
    return parser


def _module(name: str):  # noqa: ANN202 - a command module
    return importlib.import_module(name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.self_test and args.command is not None:
        parser.error("--self-test runs on its own: leave out the command")
    if args.command is None and not args.self_test:
        args = parser.parse_args(["gui"])
    run: Callable[[argparse.Namespace], int] = (
        (lambda _args: _module("core.training.self_test").main()) if args.self_test else _module(args._module).run)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `lorakiln plan --json | head`): not an error of ours.
        # Point stdout at devnull so the interpreter's final flush does not fail again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
