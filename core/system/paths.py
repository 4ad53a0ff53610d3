"""Per-user locations for everything LoRA Kiln writes (never its own install folder)."""

from __future__ import annotations

from pathlib import Path

import platformdirs

APP_NAME = "LoRA Kiln"


def user_data_dir() -> Path:
    """Linux ~/.local/share/LoRA Kiln, macOS ~/Library/Application Support/LoRA Kiln,
    Windows %LOCALAPPDATA%\\LoRA Kiln."""
    return platformdirs.user_data_path(APP_NAME, appauthor=False)


def default_runs_dir() -> Path:
    """Where run folders go when a preset leaves output.output_dir empty."""
    return user_data_dir() / "runs"


def user_presets_dir() -> Path:
    return user_data_dir() / "presets"


def log_dir() -> Path:
    return platformdirs.user_log_path(APP_NAME, appauthor=False)


def settings_dir() -> Path:
    return platformdirs.user_config_path(APP_NAME, appauthor=False)


def user_cache_dir() -> Path:
    """Disposable data (the disk latent cache): safe to delete at any time."""
    return platformdirs.user_cache_path(APP_NAME, appauthor=False)
