"""The image folders of the project: a table of subsets that edits ``dataset.subsets``.

The table reads ``project.config`` directly and writes every edit through
``Project.set_value``, so the checks (types, ranges) are the preset's and the other tabs
see the change at once. Folders are added with a dialog or dropped from a file manager;
what a folder is (Kohya layout, repeats in its own name, or plain) is guessed from its
names, as a kohya_ss user lays folders out.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, Qt, Signal
from PySide6.QtGui import QColor, QDragEnterEvent, QDragMoveEvent, QDropEvent
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableView

from core.config.schema import SubsetParams
from core.data.scan import parse_kohya_folder_name
from core.config.params import FieldError, spec_for
from gui.project import Project

# (field, header) of the columns; every other subset option is in the detail panel.
COLUMNS: list[tuple[str, str]] = [
    ("image_dir", "Folder"),
    ("kohya_layout", "Kohya"),
    ("num_repeats", "Repeats"),
    ("caption_extension", "Captions"),
    ("class_tokens", "Class tokens"),
    ("is_reg", "Reg."),
]
TABLE_FIELDS = frozenset(name for name, _ in COLUMNS)
_BOOL_FIELDS = frozenset({"kohya_layout", "is_reg"})
# In Kohya layout the sub-folder names give repeats and class tokens, so these do nothing.
_FROM_FOLDER_NAMES = frozenset({"num_repeats", "class_tokens"})
_MUTED = QColor("#8a8a8a")


def _repeats_in(name: str) -> tuple[int, str] | None:
    parsed = parse_kohya_folder_name(name)
    if parsed is None or parsed[0] < 1:
        return None
    return parsed


def subset_for_folder(folder: str | os.PathLike[str]) -> SubsetParams:
    """A subset for a folder as a kohya_ss user lays it out.

    A folder holding ``N_name`` sub-folders is a Kohya training folder; a folder that is
    itself called ``N_name`` has N repeats and ``name`` as class tokens; anything else is
    a plain folder with 1 repeat.
    """
    path = Path(folder)
    try:
        children = [entry.name for entry in os.scandir(path) if entry.is_dir() and not entry.name.startswith(".")]
    except OSError:
        children = []
    if any(_repeats_in(name) for name in children):
        return SubsetParams(image_dir=str(path), kohya_layout=True)
    parsed = _repeats_in(path.name)
    if parsed is not None:
        spec = spec_for(SubsetParams, "num_repeats")
        ceiling = int(spec.info.maximum) if spec and spec.info.maximum else parsed[0]
        return SubsetParams(image_dir=str(path), num_repeats=min(parsed[0], ceiling), class_tokens=parsed[1])
    return SubsetParams(image_dir=str(path))


class SubsetsModel(QAbstractTableModel):
    """``project.config.dataset.subsets`` as rows; edits go through ``Project.set_value``."""

    error = Signal(str)  # a refused edit's message, or "" after an accepted one

    def __init__(self, project: Project, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._project = project
        self._row_count = len(self._subsets)
        project.changed.connect(self._on_project_changed)
        project.loaded.connect(self._on_project_loaded)

    @property
    def _subsets(self) -> list[SubsetParams]:
        return self._project.config.dataset.subsets

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802 - Qt API
        return 0 if parent.isValid() else len(self._subsets)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802 - Qt API
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation,  # noqa: N802 - Qt API
                   role: int = Qt.ItemDataRole.DisplayRole):  # noqa: ANN201
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(COLUMNS):
            return None
        name, header = COLUMNS[section]
        if role == Qt.ItemDataRole.DisplayRole:
            return header
        if role == Qt.ItemDataRole.ToolTipRole:
            spec = spec_for(SubsetParams, name)
            return f"{spec.info.label}: {spec.info.help}" if spec else None
        return None

    def flags(self, index: QModelIndex) -> Qt.ItemFlag:
        base = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        if not index.isValid():
            return base
        name = COLUMNS[index.column()][0]
        if name in _BOOL_FIELDS:
            return base | Qt.ItemFlag.ItemIsUserCheckable
        if name in _FROM_FOLDER_NAMES and self._subsets[index.row()].kohya_layout:
            return base
        return base | Qt.ItemFlag.ItemIsEditable

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole):  # noqa: ANN201
        if not index.isValid() or index.row() >= len(self._subsets):
            return None
        subset = self._subsets[index.row()]
        name = COLUMNS[index.column()][0]
        value = getattr(subset, name)
        from_names = name in _FROM_FOLDER_NAMES and subset.kohya_layout
        if name in _BOOL_FIELDS:
            if role == Qt.ItemDataRole.CheckStateRole:
                return Qt.CheckState.Checked if value else Qt.CheckState.Unchecked
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return "by folder" if from_names else value
        if role == Qt.ItemDataRole.EditRole:
            return value
        if role == Qt.ItemDataRole.ForegroundRole and from_names:
            return _MUTED
        if role == Qt.ItemDataRole.ToolTipRole:
            if from_names:
                return "In Kohya layout each N_name sub-folder gives its own repeats and class tokens."
            return str(value) if name == "image_dir" else None
        return None

    def setData(self, index: QModelIndex, value, role: int = Qt.ItemDataRole.EditRole) -> bool:  # noqa: ANN001, N802
        if not index.isValid():
            return False
        name = COLUMNS[index.column()][0]
        if name in _BOOL_FIELDS:
            if role != Qt.ItemDataRole.CheckStateRole:
                return False
            value = value in (Qt.CheckState.Checked, Qt.CheckState.Checked.value)
        elif role != Qt.ItemDataRole.EditRole:
            return False
        try:
            self._project.set_value(f"dataset.subsets[{index.row()}].{name}", value)
        except FieldError as error:
            self.error.emit(str(error))
            return False
        self.error.emit("")
        return True

    def _on_project_changed(self, path: str) -> None:
        if not path.startswith("dataset.subsets"):
            return
        if path == "dataset.subsets" or len(self._subsets) != self._row_count:
            self._on_project_loaded()
        elif self._subsets:
            # One field changed; kohya_layout also changes which cells are editable.
            self.dataChanged.emit(self.index(0, 0), self.index(len(self._subsets) - 1, len(COLUMNS) - 1))

    def _on_project_loaded(self) -> None:
        self.beginResetModel()
        self._row_count = len(self._subsets)
        self.endResetModel()


def local_folders(mime) -> list[str]:  # noqa: ANN001 - QMimeData
    """The local folders among dragged URLs (files are not image folders)."""
    if not mime.hasUrls():
        return []
    paths = [url.toLocalFile() for url in mime.urls() if url.isLocalFile()]
    return [path for path in paths if path and os.path.isdir(path)]


class SubsetsView(QTableView):
    """The subsets table; folders dropped on it from a file manager are added."""

    folders_dropped = Signal(list)  # list[str]

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.viewport().setAcceptDrops(True)
        self.setDragDropMode(QAbstractItemView.DragDropMode.DropOnly)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked
                             | QAbstractItemView.EditTrigger.EditKeyPressed
                             | QAbstractItemView.EditTrigger.SelectedClicked)
        self.verticalHeader().setVisible(False)
        self.setWordWrap(False)
        self.setTextElideMode(Qt.TextElideMode.ElideLeft)  # the folder's own name is at the end

    def setModel(self, model) -> None:  # noqa: ANN001, N802 - Qt API
        super().setModel(model)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        # Class tokens can be long: a fixed, resizable width keeps the folder column readable.
        tokens = [name for name, _ in COLUMNS].index("class_tokens")
        header.setSectionResizeMode(tokens, QHeaderView.ResizeMode.Interactive)
        header.resizeSection(tokens, 110)
        header.setMinimumSectionSize(40)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt API
        if local_folders(event.mimeData()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:  # noqa: N802 - Qt API
        # Accepted anywhere over the table: where a folder lands does not matter.
        if local_folders(event.mimeData()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt API
        folders = local_folders(event.mimeData())
        if not folders:
            event.ignore()
            return
        event.acceptProposedAction()
        self.folders_dropped.emit(folders)
