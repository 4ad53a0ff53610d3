"""Where file dialogs start: the folder last used for that kind of file, else the person's
Documents (or home) folder; never the app's own folder or its shipped resources.

An empty start folder makes Qt open the working directory, which for an installed or
frozen app is its install folder: a preset or plot saved there is lost on the next update
(or refused as read-only), so every dialog asks here instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QStandardPaths

from core.system.resources import resources_root
from gui.settings import settings

_KEY = "dialogs/last_folder/"


def _app_folders() -> list[Path]:
    folders = [resources_root(), Path(__file__).resolve().parents[1]]  # gui/ -> the checkout or bundle
    if getattr(sys, "frozen", False):
        folders.append(Path(sys.executable).parent)
    return [f.resolve() for f in folders]


def inside_app(path: str | Path) -> bool:
    """True for the app's install folder, its resources and anything inside them."""
    try:
        resolved = Path(path).expanduser().resolve()
    except OSError:
        return False
    return any(resolved == app or resolved.is_relative_to(app) for app in _app_folders())


def user_folder() -> Path:
    """The person's Documents folder where it exists, else their home."""
    documents = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DocumentsLocation)
    if documents and Path(documents).is_dir():
        return Path(documents)
    return Path.home()


def _usable(folder: str | Path | None) -> bool:
    return bool(folder) and Path(str(folder)).expanduser().is_dir() and not inside_app(str(folder))


def start_folder(kind: str, preferred: str | Path | None = None) -> Path:
    """Where a dialog for ``kind`` ("preset", "kohya_config", ...) opens: the folder last
    used for it, else ``preferred`` (the app's own folder for that kind, say), else the
    person's Documents or home."""
    last = settings().value(_KEY + kind, "") or ""
    for folder in (last, preferred):
        if _usable(folder):
            return Path(str(folder)).expanduser()
    return user_folder()


def start_path(kind: str, name: str, preferred: str | Path | None = None) -> str:
    """A Save dialog's starting file: ``name`` in start_folder(kind)."""
    return str(start_folder(kind, preferred) / name)


def remember_folder(kind: str, chosen: str | Path) -> None:
    """Remember the folder of a chosen file (or the chosen folder) for the next dialog."""
    if not chosen:
        return
    path = Path(str(chosen)).expanduser()
    folder = path if path.is_dir() else path.parent
    if not inside_app(folder):
        settings().setValue(_KEY + kind, str(folder))
