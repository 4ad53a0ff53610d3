"""The VRAM line of the Parameters and Training tabs: "≈ 6.3 GB of your 8 GB (VRAM forecast)",
green when it fits the card and red when not, the breakdown and the changes that would fit
behind "Details", and the card ("Your GPU: [8 GB]") to compare with."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QHideEvent, QShowEvent
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QToolButton, QVBoxLayout, QWidget

from core.training.vram_advice import CARD_SIZES_GB, gib, iter_lines
from gui import theme
from gui.vram_forecaster import VramForecaster, VramState

UNITS_NOTE = ("The headline and your card are in GB as cards are sold (an “8 GB” card holds 8 GiB); "
              "the breakdown counts 10⁹ bytes a GB.")
DETECTED_TIP = "The GPU found on this computer. Choose a size to plan for another card."
CHOSEN_TIP = ("No CUDA GPU was found on this computer: choose the memory of the card you will train on. "
              "The choice is remembered.")


def headline(state: VramState) -> str:
    return f"≈ {gib(state.forecast.driver)} of your {state.card.size_label} (VRAM forecast)"


def detail_text(state: VramState) -> str:
    """The breakdown (VramForecast.lines) and the advice, for the Details area and tooltips."""
    lines = list(state.forecast.lines())
    if state.advice is not None and not state.fits:
        lines += ["", *iter_lines(state.advice)]
    elif state.fits is False:
        lines += ["", "Looking for the cheapest changes that would fit…"]
    if state.advice_error:
        lines.append(f"The changes that would fit could not be worked out: {state.advice_error}")
    return "\n".join([*lines, "", UNITS_NOTE])


class VramPanel(QWidget):
    def __init__(self, forecaster: VramForecaster, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.forecaster = forecaster
        self._watching = False
        self.figure = QLabel()
        self.figure.setObjectName("vramFigure")
        self.figure.setTextFormat(Qt.TextFormat.PlainText)
        self.details_button = QToolButton()
        self.details_button.setText("Details")
        self.details_button.setCheckable(True)
        self.details_button.setArrowType(Qt.ArrowType.RightArrow)
        self.details_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.details_button.setToolTip("Show what the forecast is made of and the changes that would fit")
        self.details_button.toggled.connect(self._on_details_button_toggled)
        self.card_box = QComboBox()
        self.card_box.setObjectName("vramCard")
        self.card_box.activated.connect(self._on_card_box_activated)
        self.details = QLabel()
        self.details.setObjectName("vramDetails")
        self.details.setTextFormat(Qt.TextFormat.PlainText)
        self.details.setWordWrap(True)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details.setStyleSheet("QLabel { background: palette(base); padding: 6px; }")
        self.details.hide()

        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.figure, 1)
        row.addWidget(self.details_button)
        row.addSpacing(12)
        row.addWidget(QLabel("Your GPU:"))
        row.addWidget(self.card_box)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.details)
        forecaster.updated.connect(self._on_forecaster_updated)
        self._on_forecaster_updated()

    # ---------------------------------------------------------------- showing
    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        if not self._watching:
            self._watching = True
            self.forecaster.watch(True)

    def hideEvent(self, event: QHideEvent) -> None:  # noqa: N802 - Qt's name
        super().hideEvent(event)
        if self._watching:
            self._watching = False
            self.forecaster.watch(False)

    def _on_forecaster_updated(self) -> None:
        self._fill_cards()
        forecaster = self.forecaster
        state = forecaster.state_for(forecaster.inputs().key) if forecaster.state is not None else None
        stale = state is None and forecaster.state is not None
        shown = state or forecaster.state
        updating = " · updating…" if forecaster.pending or stale else ""
        if shown is None:
            self._show("VRAM forecast: " + ("working it out…" if forecaster.pending else
                                            "made when these settings are shown"), theme.DISABLED_TEXT, "")
        elif shown.error:
            self._show(f"VRAM forecast unavailable: {shown.error}{updating}", theme.WARNING,
                       "The forecast could not be made; training is not held back by this.")
        elif shown.forecast is not None:
            text = headline(shown)
            if shown.fits is False:
                count = len(shown.advice.suggestions) if shown.advice is not None else None
                text += (": does not fit — looking for changes that would" if count is None else
                         f": does not fit — {count} change{'' if count == 1 else 's'} would, see Details" if count
                         else ": does not fit — see Details")
            colour = theme.DISABLED_TEXT if stale else theme.OK if shown.fits else theme.ERROR
            self._show(text + updating, colour, detail_text(shown))

    def _show(self, text: str, colour: str, details: str) -> None:
        self.figure.setText(text)
        self.figure.setStyleSheet(f"color: {colour}; font-weight: bold")
        self.figure.setToolTip(details)
        self.details.setText(details or "No forecast yet.")

    def _on_details_button_toggled(self, shown: bool) -> None:
        self.details_button.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)
        self.details.setVisible(shown)

    # ---------------------------------------------------------------- the card
    def _fill_cards(self) -> None:
        detected = self.forecaster.detected
        entries = ([(f"{detected.name} ({detected.size_label})", 0)] if detected is not None else []) + \
            [(f"{size} GB", size) for size in CARD_SIZES_GB]
        choice = self.forecaster.card_choice()
        if choice not in {value for _, value in entries}:
            entries.append((f"{choice} GB", choice))
        box = self.card_box
        if [(box.itemText(i), box.itemData(i)) for i in range(box.count())] != entries:
            box.blockSignals(True)
            box.clear()
            for text, value in entries:
                box.addItem(text, value)
            box.blockSignals(False)
        box.blockSignals(True)
        box.setCurrentIndex(box.findData(choice))
        box.blockSignals(False)
        box.setToolTip(DETECTED_TIP if detected is not None else CHOSEN_TIP)

    def _on_card_box_activated(self, index: int) -> None:
        self.forecaster.set_card_choice(int(self.card_box.itemData(index)))
