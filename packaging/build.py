"""Build the double-click app: dist/lorakiln/, a one-folder PyInstaller bundle.

    python3 dev.py build [--self-test] [--wheel] [--clean]

runs this script in the project's .venv after installing the `build` extra. It builds for
the platform it runs on (Linux and Windows are covered by packaging/lorakiln.spec), copies
the desktop-entry and shortcut helpers into the folder, and prints the folder, its size
and the build time. --self-test then runs the built app's self-test; --wheel also builds
the wheel and checks that it installs and runs in a fresh virtual environment
(packaging/wheel_check.py). The exit status is non-zero when any step fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "packaging" / "lorakiln.spec"
DIST = ROOT / "dist"
WORK = ROOT / "build" / "pyinstaller"
APP_DIR = DIST / "lorakiln"
# Helpers that travel with the app folder, so a user who only has the folder can add it
# to the desktop menu (Linux) or the Start menu (Windows).
HELPERS = {"posix": [Path("linux", "install-desktop-entry.sh"), Path("linux", "lorakiln.desktop")],
           "nt": [Path("windows", "create-shortcut.ps1")]}


def executable(name: str) -> Path:
    return APP_DIR / (f"{name}.exe" if os.name == "nt" else name)


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def human_size(n_bytes: int) -> str:
    if n_bytes >= 1024**3:
        return f"{n_bytes / 1024**3:.2f} GB"
    return f"{n_bytes / 1024**2:.0f} MB"


def check_tools() -> str | None:
    """Why the build cannot run here, or None."""
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        return "PyInstaller is not installed in this environment; run `python3 dev.py build`, which installs it"
    if not (ROOT / "resources" / "icons" / "lorakiln.ico").is_file():
        return "resources/icons/lorakiln.ico is missing; run `python packaging/make_icons.py`"
    return None


def run_pyinstaller(clean: bool) -> None:
    cmd = [sys.executable, "-m", "PyInstaller", str(SPEC), "--noconfirm", "--log-level", "WARN",
           "--distpath", str(DIST), "--workpath", str(WORK)]
    if clean:
        cmd.append("--clean")
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def copy_helpers() -> list[Path]:
    copied = []
    for helper in HELPERS.get(os.name, []):
        target = APP_DIR / helper.name
        shutil.copy2(ROOT / "packaging" / helper, target)
        copied.append(target)
    return copied


def run_self_test() -> int:
    program = executable("lorakiln-cli")
    print(f"+ {program} --self-test", flush=True)
    # Run from outside the source tree, so nothing can be found there by accident.
    return subprocess.call([str(program), "--self-test"], cwd=DIST)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build LoRA Kiln's one-folder app into dist/lorakiln/.")
    parser.add_argument("--self-test", action="store_true", help="run the built app's --self-test afterwards")
    parser.add_argument("--wheel", action="store_true",
                        help="also build the wheel and check it installs and runs in a fresh venv")
    parser.add_argument("--clean", action="store_true", help="empty PyInstaller's cache first (slower)")
    args = parser.parse_args(argv)
    problem = check_tools()
    if problem:
        print(f"cannot build: {problem}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        run_pyinstaller(args.clean)
    except subprocess.CalledProcessError as err:
        print(f"the PyInstaller build failed (exit status {err.returncode}); its messages are above", file=sys.stderr)
        return 1
    copy_helpers()
    seconds = time.monotonic() - started
    size = folder_size(APP_DIR)
    print(f"built {APP_DIR} ({human_size(size)}, {size} bytes) in {seconds:.0f} s", flush=True)
    print(f"run it: {executable('lorakiln')}   check it: {executable('lorakiln-cli')} --self-test", flush=True)
    status = 0
    if args.self_test:
        status = run_self_test()
        if status:
            print(f"the built app's self-test failed (exit status {status})", file=sys.stderr)
    if args.wheel:
        sys.path.insert(0, str(ROOT / "packaging"))
        from wheel_check import build_and_check_wheel

        status = build_and_check_wheel() or status
    return status


if __name__ == "__main__":
    sys.exit(main())
