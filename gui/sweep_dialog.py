"""The Sweep dialog: pick one parameter of the schema and a comma list of values; it queues one
run of the open project per value. Every keystroke is checked the way ``lorakiln sweep`` checks
(``parse_vary`` and ``sweep_configs``), and what is wrong shows under the fields, not later."""

from __future__ import annotations

import enum
from typing import Any

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QCompleter, QDialog, QDialogButtonBox, QFormLayout, QLabel,
                               QLineEdit, QVBoxLayout, QWidget)

from core.config.schema import GROUPS, SubsetParams
from core.config.params import param_specs
from core.studies.sweep import SweepError, parse_vary, sweep_configs
from core.system.words import count
from gui import theme
from gui.screen import fit_to_screen

DEFAULT_FIELD = "dataset.resolution"


def sweepable_fields(subset_count: int) -> list[tuple[str, Any]]:
    """(path, ParamSpec) of every field a sweep may vary, in schema order: each group's fields,
    then each existing subset's ("dataset.subsets[0].num_repeats")."""
    out = []
    for group, cls in GROUPS.items():
        for spec in param_specs(cls):
            if spec.name != "subsets" and f"{group}.{spec.name}" not in ("output.output_name", "output.output_dir"):
                out.append((f"{group}.{spec.name}", spec))
    for index in range(subset_count):
        out += [(f"dataset.subsets[{index}].{spec.name}", spec) for spec in param_specs(SubsetParams)]
    return out


def show_value(value: Any) -> str:
    """A value the way it would be typed in the values box."""
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    if isinstance(value, str):
        return f"“{value}”" if value else "(empty)"
    return str(value)


class SweepDialog(QDialog):
    sweep_queued = Signal(str, bool)  # sweep id, whether to run the queue now

    def __init__(self, project: Any, queue: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Sweep a parameter")
        self.project = project
        self.queue = queue
        self.spec = None
        self._specs = dict(sweepable_fields(len(project.config.dataset.subsets)))

        self.field_combo = QComboBox()
        self.field_combo.setEditable(True)
        self.field_combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.field_combo.addItems(list(self._specs))
        completer = QCompleter(list(self._specs), self.field_combo)
        completer.setFilterMode(Qt.MatchFlag.MatchContains)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.field_combo.setCompleter(completer)
        self.field_combo.setToolTip("The parameter each run changes (type to search)")
        self.current_label = QLabel()
        self.current_label.setWordWrap(True)
        self.current_label.setStyleSheet("color: #555")
        self.values_edit = QLineEdit()
        self.values_edit.setPlaceholderText("comma-separated, e.g. 256, 384, 512")
        self.values_edit.setToolTip("One run per value, written like a --set value (lists in [brackets])")
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.setStyleSheet(f"color: {theme.ERROR}")
        self.preview_label = QLabel()
        self.preview_label.setWordWrap(True)
        self.start_box = QCheckBox("Run the queue now")
        self.start_box.setChecked(True)
        self.start_box.setToolTip("Start training the queue as soon as the sweep is queued")
        self.buttons = QDialogButtonBox()
        self.queue_button = self.buttons.addButton("Queue sweep", QDialogButtonBox.ButtonRole.AcceptRole)
        self.buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.buttons.accepted.connect(self.queue_sweep)
        self.buttons.rejected.connect(self.reject)

        form = QFormLayout()
        form.addRow("Parameter", self.field_combo)
        form.addRow("", self.current_label)
        form.addRow("Values", self.values_edit)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.error_label)
        layout.addWidget(self.preview_label)
        layout.addWidget(self.start_box)
        layout.addWidget(self.buttons)
        fit_to_screen(self, QSize(620, 300))

        self.field_combo.currentTextChanged.connect(self._on_field_combo_text_changed)
        self.values_edit.textChanged.connect(self._on_values_edit_text_changed)
        if DEFAULT_FIELD in self._specs:
            self.field_combo.setCurrentText(DEFAULT_FIELD)
        self._on_field_combo_text_changed(self.field_combo.currentText())

    # ---------------------------------------------------------------- checking
    def field(self) -> str:
        return self.field_combo.currentText().strip()

    def set_sweep(self, field: str, values: str) -> None:
        """Fill both boxes (what a person types; tests use it too)."""
        self.field_combo.setCurrentText(field)
        self.values_edit.setText(values)
        self.validate()

    def validate(self) -> bool:
        """Check the sweep as typed; shows the problems or the runs it will queue."""
        self.spec = None
        field, values = self.field(), self.values_edit.text().strip()
        problem = None
        if not values:
            problem = "Type the values to try, separated by commas."
        else:
            try:
                spec = parse_vary(f"{field}={values}")
                configs = sweep_configs(self.project.snapshot(), spec)
            except SweepError as error:
                problem = str(error)
            else:
                self.spec = spec
                names = ", ".join(config.output.output_name for _, config in configs)
                self.preview_label.setText(f"Queues {count(len(configs), 'run')}: {names}")
        self.error_label.setText(problem or "")
        self.error_label.setVisible(bool(problem))
        self.preview_label.setVisible(problem is None)
        self.queue_button.setEnabled(self.spec is not None)
        return self.spec is not None

    def queue_sweep(self) -> str | None:
        """Queue one item per value; the sweep's id, or None (the problem shown) when it cannot."""
        if not self.validate():
            return None
        try:
            sweep_id, _items = self.queue.add_sweep(self.project.snapshot(), self.spec, self.project.description)
        except SweepError as error:
            self.error_label.setText(str(error))
        except OSError as error:
            self.error_label.setText(f"Cannot save the queue {self.queue.path}: {error.strerror or error}. "
                                     "Nothing was queued.")
        else:
            self.sweep_queued.emit(sweep_id, self.start_box.isChecked())
            self.accept()
            return sweep_id
        self.error_label.show()
        self.preview_label.hide()
        return None

    # ---------------------------------------------------------------- slots
    def _on_field_combo_text_changed(self, text: str) -> None:
        spec = self._specs.get(text.strip())
        if spec is None:
            self.current_label.setText("Not a parameter of the schema: pick one from the list.")
        else:
            try:
                current = show_value(self.project.value(text.strip()))
            except (AttributeError, IndexError, ValueError):
                current = "?"
            unit = f" {spec.info.unit}" if spec.info.unit else ""
            choices = f" — one of: {', '.join(spec.choices)}" if spec.choices else ""
            self.current_label.setText(f"{spec.info.label}: now {current}{unit}{choices}")
            self.current_label.setToolTip(spec.info.help)
        if self.values_edit.text().strip():
            self.validate()
        else:
            self.queue_button.setEnabled(False)
            self.error_label.hide()
            self.preview_label.hide()

    def _on_values_edit_text_changed(self, _text: str) -> None:
        self.validate()
