"""Build LoRA Kiln's wheel and prove it installs and runs on its own.

    .venv/bin/python packaging/wheel_check.py        (or: python3 dev.py build --wheel)

1. ``python -m build --wheel --no-isolation`` into dist/ (no isolation: the setuptools the
   lock pins is already in .venv, so the build needs no download);
2. checks that every shipped file under resources/ is in the wheel as lorakiln_resources;
3. installs the wheel into a fresh virtual environment under build/wheel-check/, with
   requirements.lock as constraints so torch stays the pinned build (pip's own settings,
   such as find-links, apply as usual);
4. runs ``lorakiln --self-test`` from that environment in a folder outside the source tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "dist"
CHECK_DIR = ROOT / "build" / "wheel-check"


def _run(cmd: list[str], **kwargs) -> None:  # noqa: ANN003 - subprocess options
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def shipped_resources() -> set[str]:
    """Wheel paths every shipped resource must have (caches and bytecode are not shipped)."""
    source = ROOT / "resources"
    return {"lorakiln_resources/" + p.relative_to(source).as_posix() for p in source.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def missing_from_wheel(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    return sorted(shipped_resources() - names)


def build_wheel() -> Path:
    started = time.time()
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", DIST, ROOT], cwd=ROOT)
    wheels = [w for w in DIST.glob("lorakiln-*.whl") if w.stat().st_mtime >= started - 1]
    if len(wheels) != 1:
        raise RuntimeError(f"expected one new wheel in {DIST}, found {[w.name for w in wheels]}")
    return wheels[0]


def install_fresh(wheel: Path) -> Path:
    """A new venv holding only the wheel and its dependencies; returns its python."""
    env_dir = CHECK_DIR / "venv"
    shutil.rmtree(env_dir, ignore_errors=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    _run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-c", ROOT / "requirements.lock",
          wheel])
    return python


def self_test_installed(python: Path) -> int:
    scripts = python.parent
    program = scripts / ("lorakiln.exe" if os.name == "nt" else "lorakiln")
    with tempfile.TemporaryDirectory(prefix="lorakiln-wheel-check-") as outside:
        print(f"+ {program} --self-test   (in {outside})", flush=True)
        result = subprocess.run([str(program), "--self-test"], cwd=outside, capture_output=True, text=True)
    print(result.stdout, end="")
    if result.returncode == 0 and "(installed package) passed" not in result.stdout:
        print("the self-test passed but did not run from the installed package", file=sys.stderr)
        return 1
    if result.returncode:
        print(result.stderr, file=sys.stderr, end="")
    return result.returncode


def build_and_check_wheel() -> int:
    try:
        wheel = build_wheel()
        missing = missing_from_wheel(wheel)
        if missing:
            print(f"{wheel.name} lacks {len(missing)} shipped file(s), e.g. {', '.join(missing[:5])}; "
                  "check [tool.setuptools.package-data] in pyproject.toml", file=sys.stderr)
            return 1
        print(f"built {wheel} ({wheel.stat().st_size / 1024**2:.1f} MB, every resource file included)", flush=True)
        started = time.monotonic()
        python = install_fresh(wheel)
        print(f"installed into {python.parent.parent} in {time.monotonic() - started:.0f} s", flush=True)
        status = self_test_installed(python)
    except (subprocess.CalledProcessError, RuntimeError) as err:
        print(f"the wheel check failed: {err}", file=sys.stderr)
        return 1
    if status:
        print(f"the installed wheel's self-test failed (exit status {status}); "
              f"the environment is kept in {CHECK_DIR} to look into", file=sys.stderr)
    else:
        shutil.rmtree(CHECK_DIR, ignore_errors=True)  # 1.5 GB, of no use once the check passed
    return status


if __name__ == "__main__":
    sys.exit(build_and_check_wheel())
