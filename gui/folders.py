"""Opening a folder in the system's file manager: one function for every "Open … folder" in
the app, so a failure (no file manager, a folder that is gone) is always said to the person."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from PySide6.QtCore import QUrl
from PySide6.QtGui import QDesktopServices


def open_url(url: QUrl) -> bool:
    """The desktop call itself (tests replace it)."""
    return QDesktopServices.openUrl(url)


def open_folder(folder: str | Path, what: str, tell: Callable[[str, str], None]) -> bool:
    """Show ``folder`` in the file manager; False, after telling the person why through
    ``tell(title, text)`` (a widget's show_message), when it cannot."""
    folder = Path(folder)
    if not folder.is_dir():
        tell(f"Cannot open the {what}", f"{folder} does not exist (any more). Refresh the run list, "
                                                   "or check that the drive holding it is connected.")
        return False
    if not open_url(QUrl.fromLocalFile(str(folder))):
        tell(f"Cannot open the {what}", f"No file manager opened {folder}. Open it yourself; the "
                                                   "path can be copied from this message.")
        return False
    return True
