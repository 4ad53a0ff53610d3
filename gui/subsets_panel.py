"""The image-folder panel: the subsets table, Add/Remove, and the selected subset's other
options in a form generated from the schema (so a new subset option appears without
touching this file)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

from PySide6.QtCore import QItemSelection, QObject, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QGridLayout, QHBoxLayout,
                               QLabel, QLineEdit, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from core.config.schema import SubsetParams
from core.config.params import FieldError, ParamSpec, optional_inner, param_specs
from gui import theme
from gui.dialog_folders import remember_folder, start_folder
from gui.project import Project
from gui.subsets_table import TABLE_FIELDS, SubsetsModel, SubsetsView, subset_for_folder

_INT_LIMIT = 2**31 - 1  # QSpinBox holds a C int


def _detail_specs() -> list[ParamSpec]:
    return [spec for spec in param_specs(SubsetParams) if spec.name not in TABLE_FIELDS]


class SubsetDetails(QWidget):
    """The selected subset's options that the table has no column for."""

    error = Signal(str)

    def __init__(self, project: Project, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._project = project
        self._row: int | None = None
        self._editors: dict[str, QWidget] = {}
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        self._title = QLabel()
        grid.addWidget(self._title, 0, 0, 1, 4)
        # Two options per row: the panel sits under the table and must stay short.
        editors = [(spec, self._make_editor(spec)) for spec in _detail_specs()]
        for slot, (spec, editor) in enumerate((s, e) for s, e in editors if e is not None):
            editor.setToolTip(spec.info.help)
            row, column = 1 + slot // 2, 2 * (slot % 2)
            text = spec.info.label + (f" ({spec.info.unit})" if spec.info.unit else "")
            if isinstance(editor, QCheckBox):
                editor.setText(text)
                grid.addWidget(editor, row, column, 1, 2)
            else:
                label = QLabel(text)
                label.setToolTip(spec.info.help)
                grid.addWidget(label, row, column)
                grid.addWidget(editor, row, column + 1)
            self._editors[spec.name] = editor
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        project.changed.connect(self._on_project_changed)
        self.set_row(None)

    def _make_editor(self, spec: ParamSpec) -> QWidget | None:
        tp, info, name = optional_inner(spec.type), spec.info, spec.name
        if tp is bool:
            box = QCheckBox()
            box.toggled.connect(lambda on: self._write(name, on))
            return box
        if tp is int:
            spin = QSpinBox()
            spin.setRange(int(info.minimum if info.minimum is not None else -_INT_LIMIT),
                          int(info.maximum if info.maximum is not None else _INT_LIMIT))
            spin.valueChanged.connect(lambda value: self._write(name, value))
            return spin
        if tp is float:
            spin = QDoubleSpinBox()
            spin.setDecimals(3)
            spin.setRange(info.minimum if info.minimum is not None else -1e9,
                          info.maximum if info.maximum is not None else 1e9)
            spin.setSingleStep(0.05 if (info.maximum or 0) <= 1 else 0.1)
            spin.valueChanged.connect(lambda value: self._write(name, value))
            return spin
        if tp is str:
            line = QLineEdit()
            line.editingFinished.connect(lambda: self._write(name, line.text()))
            return line
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            combo = QComboBox()
            combo.addItems([member.value for member in tp])
            combo.currentTextChanged.connect(lambda text: self._write(name, text))
            return combo
        return None  # a type this form cannot edit: the preset file still can

    def set_row(self, row: int | None) -> None:
        subsets = self._project.config.dataset.subsets
        self._row = row if row is not None and 0 <= row < len(subsets) else None
        self.setEnabled(self._row is not None)
        if self._row is None:
            self._title.setText("<i>Select a folder to edit its caption and augmentation options.</i>")
            return
        self._title.setText(f"<b>Options of {Path(subsets[self._row].image_dir).name or 'this folder'}</b>")
        self._load()

    def _load(self) -> None:
        subset = self._project.config.dataset.subsets[self._row]
        for name, editor in self._editors.items():
            self._show(editor, getattr(subset, name))

    @staticmethod
    def _show(editor: QWidget, value: Any) -> None:
        # Signals blocked: showing a value must not write it back (and trigger a rescan).
        editor.blockSignals(True)
        try:
            if isinstance(editor, QCheckBox):
                editor.setChecked(bool(value))
            elif isinstance(editor, (QSpinBox, QDoubleSpinBox)):
                editor.setValue(value)
            elif isinstance(editor, QComboBox):
                editor.setCurrentText(value.value if isinstance(value, enum.Enum) else str(value))
            elif isinstance(editor, QLineEdit) and editor.text() != value:
                editor.setText(str(value))
        finally:
            editor.blockSignals(False)

    def _write(self, name: str, value: Any) -> None:
        if self._row is None:
            return
        try:
            self._project.set_value(f"dataset.subsets[{self._row}].{name}", value)
        except FieldError as error:
            self.error.emit(str(error))
            self._load()  # the refused value must not stay on screen
            return
        self.error.emit("")

    def _on_project_changed(self, path: str) -> None:
        if path == "dataset.subsets":
            self.set_row(self._row)
        elif self._row is not None and path.startswith(f"dataset.subsets[{self._row}]."):
            self._load()


class SubsetsPanel(QWidget):
    """Table, Add folder…/Remove, the error line and the detail form."""

    def __init__(self, project: Project, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._project = project
        self.model = SubsetsModel(project, self)
        self.view = SubsetsView()
        self.view.setModel(self.model)
        self.add_button = QPushButton("Add folder…")
        self.remove_button = QPushButton("Remove")
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(f"color: {theme.ERROR};")
        self.error_label.hide()
        self.details = SubsetDetails(project)

        buttons = QHBoxLayout()
        buttons.addWidget(QLabel("<b>Image folders</b>"))
        buttons.addStretch(1)
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.remove_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.error_label)
        layout.addWidget(self.details)

        self.add_button.clicked.connect(self._on_add_button_clicked)
        self.remove_button.clicked.connect(self._on_remove_button_clicked)
        self.view.folders_dropped.connect(self.add_folders)
        self.model.error.connect(self._on_model_error)
        self.details.error.connect(self._on_model_error)
        self.model.modelReset.connect(self._on_model_reset)
        self.view.selectionModel().selectionChanged.connect(self._on_selection_changed)
        self._on_model_reset()

    def selected_row(self) -> int | None:
        rows = self.view.selectionModel().selectedRows()
        return rows[0].row() if rows else None

    def select_row(self, row: int) -> None:
        if 0 <= row < self.model.rowCount():
            self.view.selectRow(row)

    def add_folders(self, folders: list[str]) -> None:
        """Add each folder as a subset (Kohya layout and repeats guessed from its names)."""
        subsets = list(self._project.config.dataset.subsets)
        listed = {str(Path(s.image_dir)) for s in subsets}
        added, duplicates = [], []
        for folder in folders:
            subset = subset_for_folder(folder)
            if str(Path(subset.image_dir)) in listed:
                duplicates.append(subset.image_dir)
                continue
            listed.add(str(Path(subset.image_dir)))
            added.append(subset)
        self._on_model_error(f"already listed: {', '.join(duplicates)}" if duplicates else "")
        if added:
            self._project.replace_subsets(subsets + added)
            self.select_row(len(subsets) + len(added) - 1)

    def remove_selected(self) -> None:
        row = self.selected_row()
        if row is None:
            return
        subsets = list(self._project.config.dataset.subsets)
        del subsets[row]
        self._project.replace_subsets(subsets)
        self.select_row(min(row, len(subsets) - 1))

    def _on_add_button_clicked(self) -> None:
        # A built-in preset's folder is inside the app: start from home instead.
        base = None if self._project.builtin else self._project.base_dir
        start = str(start_folder("dataset", base))
        folder = QFileDialog.getExistingDirectory(self, "Add image folder", start)
        if folder:
            remember_folder("dataset", folder)
            self.add_folders([folder])

    def _on_remove_button_clicked(self) -> None:
        self.remove_selected()

    def _on_model_error(self, message: str) -> None:
        self.error_label.setText(message)
        self.error_label.setVisible(bool(message))

    def _on_model_reset(self) -> None:
        if self.selected_row() is None and self.model.rowCount() > 0:
            self.select_row(0)  # the detail panel then shows the options of a real folder
        self.remove_button.setEnabled(self.selected_row() is not None)
        self.details.set_row(self.selected_row())

    def _on_selection_changed(self, selected: QItemSelection, deselected: QItemSelection) -> None:
        row = self.selected_row()
        self.remove_button.setEnabled(row is not None)
        self.details.set_row(row)
