#!/usr/bin/env python3
"""Set up LoRA Kiln in ./.venv and run it, or its tests, in one command.

    python3 dev.py app [ARGS...]    install if needed, then run `lorakiln ARGS...`
                                    (no ARGS: the desktop app on the built-in demo project)
    python3 dev.py test [ARGS...]   install if needed (with test tools), then run pytest ARGS...
    python3 dev.py build [ARGS...]  install if needed (with PyInstaller), then build the
                                    double-click app into dist/lorakiln/ (packaging/build.py
                                    ARGS: --self-test, --wheel, --clean)
    python3 dev.py setup            install only

Only the standard library is used here, so this works on a machine that has nothing but
Python 3.11+. Every package version comes from requirements.lock (passed to pip as
constraints), which pins torch==2.13.0: on a CPU machine pip takes the CPU build; a GPU
user installs their CUDA build of torch 2.13.0 first (README), or sets
LORAKILN_TORCH_INDEX to the PyTorch index URL and this script does it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
LOCK = ROOT / "requirements.lock"
STAMP = VENV / "lorakiln-install.json"


def venv_python() -> Path:
    if os.name == "nt":
        return VENV / "Scripts" / "python.exe"
    return VENV / "bin" / "python"


def wanted_stamp(extras: set[str]) -> dict[str, str]:
    digest = hashlib.sha256()
    for name in ("requirements.lock", "pyproject.toml"):
        digest.update((ROOT / name).read_bytes())
    return {"inputs": digest.hexdigest(), "extras": ",".join(sorted(extras)),
            "torch_index": os.environ.get("LORAKILN_TORCH_INDEX", "")}


def installed_stamp() -> dict[str, str]:
    try:
        return json.loads(STAMP.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def stamp_extras(stamp: dict[str, str]) -> set[str]:
    return {name for name in stamp.get("extras", "").split(",") if name}


def run(cmd: list[str]) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def ensure_installed(extras: set[str]) -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"LoRA Kiln needs Python 3.11 or newer; this is {sys.version.split()[0]}.")
    current = installed_stamp()
    have = stamp_extras(current)
    want = wanted_stamp(extras)
    # An install with more extras also serves a command that needs fewer (the test tools
    # serve `app`), so it is not redone.
    if current.get("inputs") == want["inputs"] and current.get("torch_index") == want["torch_index"] \
            and extras <= have:
        return
    # Extras installed earlier stay in the stamp: their packages are in the venv anyway,
    # and `test` after `build` must not reinstall for want of the other's tools.
    extras = extras | have
    want = wanted_stamp(extras)
    if not venv_python().exists():
        print(f"Creating the virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    py = venv_python()
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check"]
    torch_index = want["torch_index"]
    if torch_index:
        run(pip + ["torch==2.13.0", "--index-url", torch_index])
    target = f".[{want['extras']}]" if extras else "."
    run(pip + ["-c", LOCK, "-e", target])
    STAMP.write_text(json.dumps(want), encoding="utf-8")


EXTRAS_FOR = {"app": set(), "setup": set(), "test": {"test"}, "build": {"build"}}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in EXTRAS_FOR:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    ensure_installed(EXTRAS_FOR[command])
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    py = str(venv_python())
    if command == "setup":
        return 0
    if command == "app":
        return subprocess.call([py, "-m", "core.cli", *rest], cwd=ROOT, env=env)
    if command == "build":
        return subprocess.call([py, str(ROOT / "packaging" / "build.py"), *rest], cwd=ROOT, env=env)
    return subprocess.call([py, "-m", "pytest", *rest], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
