"""The one place that knows where shipped data lives: from source, installed, or frozen."""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

BUILTIN_PREFIX = "builtin:"


@lru_cache(maxsize=1)
def resources_root() -> Path:
    """Return the folder that holds presets, model configs, tokenizer and demo data."""
    frozen_root = getattr(sys, "_MEIPASS", None)
    if frozen_root:  # PyInstaller unpacks data next to the executable's libraries
        return Path(frozen_root) / "resources"
    source = Path(__file__).resolve().parents[2] / "resources"  # core/system/ -> the checkout
    if (source / "presets").is_dir():
        return source
    import importlib.util

    spec = importlib.util.find_spec("lorakiln_resources")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    raise FileNotFoundError(
        "LoRA Kiln's resources folder is missing; reinstall the application"
    )


def resource_path(*parts: str) -> Path:
    """Path of a shipped file or folder, e.g. ``resource_path("presets", "demo.toml")``."""
    return resources_root().joinpath(*parts)


def is_builtin(value: str) -> bool:
    return value.startswith(BUILTIN_PREFIX)


def resolve_builtin(value: str) -> Path:
    """Turn ``builtin:demo/dataset`` into the path of that shipped resource."""
    if not is_builtin(value):
        raise ValueError(f"not a builtin reference: {value!r}")
    rest = value[len(BUILTIN_PREFIX):].strip("/")
    return resources_root().joinpath(*rest.split("/"))
