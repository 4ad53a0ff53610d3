"""One look for the whole app: Qt's Fusion style with a light palette, and the colours the
plots and overlays use. Widgets take colours from here, never their own."""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

# Plot series colours, distinguishable for common colour-vision deficiencies (Okabe-Ito).
SERIES = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
RAW = "#9bbbd9"  # raw values behind a smoothed curve
SMOOTH = "#0072B2"
VALIDATION = "#D55E00"  # the validation loss beside the training loss: another hue, not a shade
ACCENT = "#0072B2"
WARNING = "#B35900"
ERROR = "#C0392B"
OK = "#1E8449"
CROP_OVERLAY = QColor(0, 0, 0, 120)  # the part of an image that training crops away
BUCKET_FRAME = QColor("#E69F00")
DISABLED_TEXT = "#9a9a9a"
PLOT_BACKGROUND = "w"
PLOT_FOREGROUND = "#333333"


def apply(app: QApplication) -> None:
    app.setStyle("Fusion")
    palette = QPalette()
    palette.setColor(QPalette.ColorRole.Window, QColor("#f3f3f3"))
    palette.setColor(QPalette.ColorRole.WindowText, QColor("#202020"))
    palette.setColor(QPalette.ColorRole.Base, QColor("#ffffff"))
    palette.setColor(QPalette.ColorRole.AlternateBase, QColor("#f7f7f7"))
    palette.setColor(QPalette.ColorRole.ToolTipBase, QColor("#ffffe8"))
    palette.setColor(QPalette.ColorRole.ToolTipText, QColor("#202020"))
    palette.setColor(QPalette.ColorRole.Text, QColor("#202020"))
    palette.setColor(QPalette.ColorRole.Button, QColor("#e8e8e8"))
    palette.setColor(QPalette.ColorRole.ButtonText, QColor("#202020"))
    palette.setColor(QPalette.ColorRole.Highlight, QColor(ACCENT))
    palette.setColor(QPalette.ColorRole.HighlightedText, QColor("#ffffff"))
    palette.setColor(QPalette.ColorRole.PlaceholderText, QColor("#8a8a8a"))
    # setColor(role, colour) sets every colour group, Disabled included: without these a
    # disabled button or label would look exactly like an enabled one.
    for role in (QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText, QPalette.ColorRole.Text):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor(DISABLED_TEXT))
    app.setPalette(palette)


def configure_plots() -> None:
    """pyqtgraph's global options, once, before the first plot is made."""
    import pyqtgraph as pg

    pg.setConfigOptions(antialias=True, background=PLOT_BACKGROUND, foreground=PLOT_FOREGROUND)
