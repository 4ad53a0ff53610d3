"""The check before Start: when the VRAM forecast of the settings being started exceeds the
card, say so ("≈ 9.1 GB of your 8 GB") and offer the cheapest changes that fit, each with its
forecast. Nothing is blocked: "Start anyway" starts as the settings are.

While the forecast of exactly these settings is still being made the dialog waits, with
"Start without the forecast" at hand; a forecast that fits or cannot be made decides by itself
(:attr:`START`) and the person never sees the dialog."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtWidgets import (QDialog, QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QProgressBar,
                               QPushButton, QVBoxLayout, QWidget)

from core.training.vram_advice import Suggestion, gib
from gui import theme
from gui.vram_forecaster import ForecastInputs, VramForecaster, VramState
from gui.screen import fit_to_screen

START, CANCEL = "start", "cancel"


class VramStartDialog(QDialog):
    decided = Signal(object)  # START, CANCEL, or the Suggestion to apply before starting

    def __init__(self, forecaster: VramForecaster, inputs: ForecastInputs, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("GPU memory")
        self.setObjectName("vramStartDialog")
        self.forecaster, self.inputs = forecaster, inputs
        self.decision: object = None
        self.headline = QLabel()
        self.headline.setWordWrap(True)
        self.headline.setTextFormat(Qt.TextFormat.PlainText)
        self.headline.setStyleSheet(f"color: {theme.ERROR}; font-weight: bold")
        self.headline.hide()
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextFormat(Qt.TextFormat.PlainText)
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setTextVisible(False)
        self.choices = QListWidget()
        self.choices.setObjectName("vramSuggestions")
        self.choices.setWordWrap(True)
        self.choices.itemSelectionChanged.connect(self._on_choices_item_selection_changed)
        self.choices.itemDoubleClicked.connect(self._on_choices_item_double_clicked)
        self.apply_button = QPushButton("Apply and start")
        self.apply_button.setToolTip("Change the settings as chosen above (as if you had edited the fields) and "
                                     "start training")
        self.start_button = QPushButton("Start anyway")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Do not start; the settings stay as they are")
        self.apply_button.clicked.connect(self._on_apply_button_clicked)
        self.start_button.clicked.connect(self._on_start_button_clicked)
        self.cancel_button.clicked.connect(self._on_cancel_button_clicked)

        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for button in (self.apply_button, self.start_button, self.cancel_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.headline)
        layout.addWidget(self.message)
        layout.addWidget(self.busy)
        layout.addWidget(self.choices, 1)
        layout.addLayout(buttons)
        fit_to_screen(self, QSize(680, 300))
        self._waiting()
        forecaster.updated.connect(self._on_forecaster_updated)

    # ---------------------------------------------------------------- the state
    def _on_forecaster_updated(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Show the forecaster's answer about these settings, or decide when there is nothing to
        ask (call once ``decided`` is connected: it may be emitted at once)."""
        if self.decision is not None:
            return
        state = self.forecaster.state_for(self.inputs.key)
        if state is not None and (state.error or state.fits):
            self._decide(START)  # nothing to warn about: a forecast error never blocks a start
        elif state is None or state.forecast is None:
            self._waiting()
        else:
            self._warning(state)

    def _waiting(self) -> None:
        self.message.setText("Working out how much GPU memory these settings need (a few seconds)…")
        self.busy.show()
        self.choices.hide()
        self.apply_button.hide()
        self.start_button.setText("Start without the forecast")
        self.start_button.setToolTip("Start now, without knowing whether the run fits your GPU")

    def _warning(self, state: VramState) -> None:
        need, card = gib(state.forecast.driver), state.card.size_label
        self.start_button.setText("Start anyway")
        self.start_button.setToolTip(f"Start as the settings are, although the forecast ({need}) exceeds {card}")
        self.apply_button.show()
        self.choices.show()
        self.headline.setText(f"≈ {need} of your {card}" + (f" ({state.card.name})" if state.card.detected else ""))
        self.headline.show()
        text = "These settings will probably run out of GPU memory."
        advice = state.advice
        if advice is None:
            self.message.setText(text + " Looking for the cheapest changes that would fit…")
            self.busy.show()
            self.choices.clear()
            self._on_choices_item_selection_changed()
            return
        self.busy.hide()
        self.choices.clear()
        for suggestion in advice.suggestions:
            item = QListWidgetItem(f"{suggestion.label}  —  ≈ {gib(suggestion.forecast.driver)}")
            item.setData(Qt.ItemDataRole.UserRole, suggestion)
            item.setToolTip("\n".join(suggestion.forecast.lines()))
            self.choices.addItem(item)
        if advice.suggestions:
            text += " The cheapest changes that would fit, cheapest first (choose one):"
            self.choices.setCurrentRow(0)
        else:
            closest = advice.closest
            text += " No change on the list fits this card" + (
                f"; all of them together still need ≈ {gib(closest.forecast.driver)}." if closest else ".")
            text += " Lower the resolution or batch size further on the Parameters tab, or start anyway."
            self.choices.hide()
            self.apply_button.hide()
        if state.advice_error:
            text += f"\n\n(The changes could not be worked out: {state.advice_error})"
        self.message.setText(text)
        self._on_choices_item_selection_changed()

    def selected(self) -> Suggestion | None:
        item = self.choices.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item is not None and not self.choices.isHidden() else None

    # ---------------------------------------------------------------- decisions
    def _decide(self, decision: object) -> None:
        if self.decision is not None:
            return
        self.decision = decision
        self.forecaster.updated.disconnect(self._on_forecaster_updated)
        self.decided.emit(decision)
        self.done(QDialog.DialogCode.Rejected if decision == CANCEL else QDialog.DialogCode.Accepted)

    def _on_choices_item_selection_changed(self) -> None:
        self.apply_button.setEnabled(self.selected() is not None)

    def _on_choices_item_double_clicked(self, _item: QListWidgetItem) -> None:
        self._on_apply_button_clicked()

    def _on_apply_button_clicked(self) -> None:
        suggestion = self.selected()
        if suggestion is not None:
            self._decide(suggestion)

    def _on_start_button_clicked(self) -> None:
        self._decide(START)

    def _on_cancel_button_clicked(self) -> None:
        self._decide(CANCEL)

    def reject(self) -> None:  # Escape and the window's close button
        self._decide(CANCEL)
