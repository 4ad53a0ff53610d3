"""What can be done with one listed run (the Runs tab's context menu): open its folder or its
LoRA's, resume it, train its settings again, delete it, copy its ``lorakiln train`` command,
export its settings as a Kohya config. Plain functions over a RunRecord, so each is testable
without the menu."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

from PySide6.QtCore import QFile

CONFIG = "config.toml"  # core.training.run_folder.CONFIG; not imported: that pulls in torch at app start

RESUMABLE = frozenset({"stopped", "interrupted", "incomplete", "cancelled", "failed"})


def config_path(record: Any) -> Path:
    return Path(record.path) / CONFIG


def can_resume(record: Any) -> bool:
    """A run that ended before its plan did and saved a training state to go on from."""
    from core.training.checkpoint import STATE_DIR, latest_state

    return (record.status in RESUMABLE and config_path(record).is_file()
            and latest_state(Path(record.path) / STATE_DIR) is not None)


def why_not_resumable(record: Any) -> str:
    if record.status not in RESUMABLE:
        return f"the run is {record.status}"
    if not config_path(record).is_file():
        return f"{config_path(record)} is missing"
    return ("it saved no training state (state is saved when a run is stopped, and at checkpoints with "
            "output.save_state on)")


def train_command(record: Any) -> str:
    """The command that trains these settings again from a terminal, or resumes the run."""
    if can_resume(record):
        return f"lorakiln train --resume {shlex.quote(str(record.path))}"
    return f"lorakiln train {shlex.quote(str(config_path(record)))}"


def move_to_trash(path: Path) -> bool:
    """True when the folder went to the system's trash (not every system has one)."""
    answer = QFile.moveToTrash(str(path))  # (moved, path in the trash) in PySide6
    return bool(answer[0] if isinstance(answer, tuple) else answer)


def delete_permanently(path: Path) -> None:
    shutil.rmtree(path)


def export_kohya(record: Any, out_dir: Path) -> list[Path]:
    """Write the run's settings as sd-scripts files into ``out_dir`` (KohyaExportError, OSError)."""
    from core.config.presets import load_preset
    from core.kohya.export import build_export, write_export

    config = load_preset(config_path(record)).config
    return write_export(build_export(config, out_dir), out_dir)
