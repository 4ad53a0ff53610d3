"""Windows and dialogs that fit the screen they open on: a first size no larger than the
screen's available area (less task bars), remembered geometry pulled back onto it, and long
messages that scroll instead of growing past the screen's edge."""

from __future__ import annotations

from PySide6.QtCore import QRect, QSize
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QMessageBox, QWidget

# Room left for a window manager's title bar and borders, which are not known until a
# window is shown: the frame of a window sized to the whole available area would overflow.
FRAME_ALLOWANCE = QSize(16, 40)
MESSAGE_LINES = 14  # a message longer than this shows its first lines; the rest scrolls under "Show Details"


def available_geometry(widget: QWidget | None = None) -> QRect:
    """The available area (task bars left out) of the screen ``widget`` is on, else the primary
    screen's. Tests replace this to stand for a small screen."""
    screen = widget.screen() if widget is not None else None
    screen = screen or QGuiApplication.primaryScreen()
    return screen.availableGeometry() if screen is not None else QRect(0, 0, 1280, 720)


def fitted_size(preferred: QSize, widget: QWidget | None = None) -> QSize:
    """``preferred``, made no larger than the available area less the frame allowance."""
    room = available_geometry(widget).size() - FRAME_ALLOWANCE
    return preferred.boundedTo(room)


def fit_to_screen(window: QWidget, preferred: QSize | None = None) -> None:
    """Size ``window`` (to ``preferred``, or as it is) within the available area, and move it
    back onto the screen where it stands partly off it. No maximum is set: moved to a larger
    screen, the window may still grow."""
    area = available_geometry(window)
    size = fitted_size(preferred if preferred is not None else window.size(), window)
    window.resize(size.expandedTo(window.minimumSizeHint().boundedTo(size)))
    geometry = window.frameGeometry()
    if not window.isVisible():  # no frame yet: count the one it will get
        geometry.setSize(window.size() + FRAME_ALLOWANCE)
    x = min(max(geometry.x(), area.x()), area.right() + 1 - geometry.width())
    y = min(max(geometry.y(), area.y()), area.bottom() + 1 - geometry.height())
    if (x, y) != (geometry.x(), geometry.y()):
        window.move(max(x, area.x()), max(y, area.y()))


def show_long_message(parent: QWidget, title: str, text: str) -> None:
    """A warning whose text may run to many lines (an import's report): the first lines in
    the box, all of them in the scrolling details, so the box never outgrows the screen."""
    lines = text.splitlines()
    box = QMessageBox(QMessageBox.Icon.Warning, title, text, QMessageBox.StandardButton.Ok, parent)
    if len(lines) > MESSAGE_LINES:
        box.setText("\n".join(lines[:MESSAGE_LINES]) + f"\n… {len(lines) - MESSAGE_LINES} more lines: Show Details…")
        box.setDetailedText(text)
    box.exec()
