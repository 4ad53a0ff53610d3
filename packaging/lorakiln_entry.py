"""The frozen app's entry point: ``core.cli.main.main`` (no arguments: the desktop app on the demo project).

Both executables of the bundle start here: ``lorakiln`` (windowed: no console on Windows)
and ``lorakiln-cli`` (a console program, for the headless commands and ``--self-test``).
"""

import multiprocessing
import os
import sys


def _give_windowless_streams_a_target() -> None:
    # A windowed Windows build starts with sys.stdout/stderr set to None; libraries that
    # print progress (tqdm, warnings) would raise on them. Their output goes nowhere
    # instead; the app's own log and the self-test's result file keep what matters.
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 - lives as long as the app


if __name__ == "__main__":
    multiprocessing.freeze_support()  # a frozen child process must not start a second app
    _give_windowless_streams_a_target()
    from core.cli.main import main

    sys.exit(main())
