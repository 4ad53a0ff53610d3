"""The Runs tab: every run in the project's output folder (and in any folder the person adds),
and the runs selected in that list compared — overlaid curves, what differs, the comparison
table — with the comparison's export and sample grids of the selected runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QPoint, Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication, QShowEvent
from PySide6.QtWidgets import (QFileDialog, QHBoxLayout, QLabel, QMenu, QMessageBox, QPushButton, QSplitter,
                               QToolButton, QVBoxLayout, QWidget)

from core.system.paths import default_runs_dir
from core.system.words import count
from gui import run_actions
from gui.compare_view import CompareView
from gui.folders import open_folder
from gui.project import Project
from gui.run_list import RunList, report
from gui.settings import settings

FOLDERS_KEY = "runs/folders"
SELECTION_DELAY_MS = 150  # a drag over many rows redraws once, when it settles


class RunsTab(QWidget):
    resume_requested = Signal(str)  # a run folder to train further (the main window starts it)
    train_again_requested = Signal(str)  # a run folder whose settings to load into the form

    def __init__(self, project: Project, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project = project
        self._shown_once = False
        self._extra_session_folders: list[Path] = []  # shown for a sweep, not remembered
        self._build()
        self._selection_timer = QTimer(self)
        self._selection_timer.setSingleShot(True)
        self._selection_timer.setInterval(SELECTION_DELAY_MS)
        self._selection_timer.timeout.connect(self._on_selection_timer_timeout)
        self.run_list.selection_changed.connect(self._on_run_list_selection_changed)
        self.run_list.loaded.connect(self._on_run_list_loaded)
        self.run_list.load_failed.connect(self._on_run_list_load_failed)
        project.loaded.connect(self._on_project_loaded)
        project.changed.connect(self._on_project_changed)
        self._update_folders()

    # ---------------------------------------------------------------- layout
    def _build(self) -> None:
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("Read the run folders again")
        self.refresh_button.clicked.connect(self.refresh)
        self.add_folder_button = QPushButton("Add folder…")
        self.add_folder_button.setToolTip("Also list the runs in another folder (remembered)")
        self.add_folder_button.clicked.connect(self._on_add_folder_button_clicked)
        self.remove_folder_button = QToolButton()
        self.remove_folder_button.setText("Remove folder")
        self.remove_folder_button.setToolTip("Stop listing a folder you added (its runs stay on disk)")
        self.remove_folder_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.remove_folder_menu = QMenu(self.remove_folder_button)
        self.remove_folder_button.setMenu(self.remove_folder_menu)
        self.grid_button = QPushButton("Make grid…")
        self.grid_button.setToolTip("Generate a labelled image grid from the selected runs' LoRAs")
        self.grid_button.clicked.connect(self._on_grid_button_clicked)
        self.export_button = QPushButton("Export comparison…")
        self.export_button.setToolTip("Write the table (CSV, Markdown) and the charts (PNG) of the selected runs")
        self.export_button.clicked.connect(self._on_export_button_clicked)
        self.folders_label = QLabel()
        self.folders_label.setStyleSheet("color: #555")
        self.count_label = QLabel()

        row = QHBoxLayout()
        for widget in (self.refresh_button, self.add_folder_button, self.remove_folder_button):
            row.addWidget(widget)
        row.addSpacing(12)
        row.addWidget(self.folders_label, 1)
        row.addWidget(self.count_label)
        row.addSpacing(12)
        row.addWidget(self.grid_button)
        row.addWidget(self.export_button)

        self.run_list = RunList()
        self.run_list.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.run_list.table.customContextMenuRequested.connect(self._on_table_context_menu_requested)
        self.compare = CompareView()
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.run_list)
        splitter.addWidget(self.compare)
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 3)
        splitter.setSizes([170, 690])
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(splitter, 1)
        self._update_buttons()

    # ---------------------------------------------------------------- folders
    def output_folder(self) -> Path:
        directory = self.project.config.output.output_dir
        return Path(directory).expanduser() if directory else default_runs_dir()

    def added_folders(self) -> list[Path]:
        stored = settings().value(FOLDERS_KEY, []) or []
        if isinstance(stored, str):
            stored = [stored]
        return [Path(p) for p in stored]

    def folders(self) -> list[Path]:
        ordered = [self.output_folder(), *self.added_folders(), *self._extra_session_folders]
        return list(dict.fromkeys(ordered))

    def add_folder(self, folder: str | Path) -> None:
        """List this folder's runs from now on, in this session and the next ones."""
        folder = Path(folder)
        if not folder.is_dir():
            self.show_message("Not a folder", f"{folder} does not exist or is not a folder.")
            return
        stored = [str(p) for p in self.added_folders()]
        if str(folder) not in stored and folder != self.output_folder():
            settings().setValue(FOLDERS_KEY, stored + [str(folder)])
        self._update_folders()
        self.refresh()

    def remove_folder(self, folder: str | Path) -> None:
        stored = [str(p) for p in self.added_folders() if p != Path(folder)]
        settings().setValue(FOLDERS_KEY, stored)
        self._update_folders()
        self.refresh()

    def _update_folders(self) -> None:
        folders = self.folders()
        self.run_list.set_folders(folders)
        names = ", ".join(str(f) for f in folders)
        self.folders_label.setText(f"Runs in: {names}")
        self.folders_label.setToolTip("\n".join(str(f) for f in folders))
        self.remove_folder_menu.clear()
        for folder in self.added_folders():
            action = self.remove_folder_menu.addAction(str(folder))
            action.triggered.connect(lambda _=False, f=folder: self.remove_folder(f))
        self.remove_folder_button.setEnabled(bool(self.added_folders()))

    # Hooks tests replace (as instance attributes): a message, and the folder question.
    def show_message(self, title: str, text: str) -> None:
        report(self, title, text)

    def ask_folder(self) -> str:
        return QFileDialog.getExistingDirectory(self, "Add a folder of runs", str(self.output_folder().parent))

    def ask_yes(self, title: str, text: str) -> bool:
        return QMessageBox.question(self, title, text) == QMessageBox.StandardButton.Yes

    def ask_export_folder(self, title: str) -> str:
        return QFileDialog.getExistingDirectory(self, title, str(self.output_folder()))

    # ---------------------------------------------------------------- one run's actions
    def run_menu(self, record: Any) -> QMenu:
        """The context menu of one run; each action names what it does to that run."""
        menu = QMenu(self)
        menu.addAction("Open folder", lambda: self.open_run_folder(record))
        lora = menu.addAction("Open LoRA's folder", lambda: self.open_lora_folder(record))
        lora.setEnabled(record.lora_path is not None)
        if record.lora_path is None:
            lora.setToolTip("This run saved no LoRA")
        menu.addSeparator()
        resume = menu.addAction("Resume", lambda: self.resume_run(record))
        resume.setEnabled(run_actions.can_resume(record))
        if not resume.isEnabled():
            resume.setToolTip(f"Cannot resume: {run_actions.why_not_resumable(record)}")
        again = menu.addAction("Train again with these settings", lambda: self.train_again(record))
        again.setEnabled(run_actions.config_path(record).is_file())
        menu.addSeparator()
        menu.addAction("Copy the lorakiln train command", lambda: self.copy_train_command(record))
        export = menu.addAction("Export Kohya config…", lambda: self.export_kohya(record))
        export.setEnabled(run_actions.config_path(record).is_file())
        menu.addSeparator()
        menu.addAction("Delete…", lambda: self.delete_run(record))
        menu.setToolTipsVisible(True)
        return menu

    def _on_table_context_menu_requested(self, pos: QPoint) -> None:
        item = self.run_list.table.itemAt(pos)
        record = self.run_list.record(item.data(Qt.ItemDataRole.UserRole)) if item is not None else None
        if record is None:
            return
        self.run_menu(record).exec(self.run_list.table.viewport().mapToGlobal(pos))

    def open_run_folder(self, record: Any) -> bool:
        return open_folder(record.path, "run's folder", self.show_message)

    def open_lora_folder(self, record: Any) -> bool:
        if record.lora_path is None:
            self.show_message("No LoRA", f"The run {record.path} saved no LoRA.")
            return False
        return open_folder(Path(record.lora_path).parent, "LoRA's folder", self.show_message)

    def resume_run(self, record: Any) -> None:
        if not run_actions.can_resume(record):
            self.show_message("Cannot resume", f"{record.path} cannot be resumed: "
                                               f"{run_actions.why_not_resumable(record)}.")
            return
        self.resume_requested.emit(str(record.path))

    def train_again(self, record: Any) -> None:
        if not run_actions.config_path(record).is_file():
            self.show_message("No settings", f"{run_actions.config_path(record)} is missing: the run's settings "
                                             "cannot be loaded.")
            return
        self.train_again_requested.emit(str(record.path))

    def copy_train_command(self, record: Any) -> str:
        command = run_actions.train_command(record)
        QGuiApplication.clipboard().setText(command)
        self.count_label.setText("command copied")
        return command

    def export_kohya(self, record: Any) -> list[Path]:
        from core.config.presets import PresetError
        from core.kohya.export import KohyaExportError

        folder = self.ask_export_folder("Export the run's settings as a Kohya config into a folder")
        if not folder:
            return []
        try:
            written = run_actions.export_kohya(record, Path(folder))
        except (KohyaExportError, PresetError) as error:
            self.show_message("Cannot export", f"{run_actions.config_path(record)}: {error}")
            return []
        except OSError as error:
            self.show_message("Cannot export", f"Cannot write into {folder}: {error.strerror or error}. "
                                               "Choose a folder you can write to.")
            return []
        self.count_label.setText(f"exported {len(written)} files to {folder}")
        return written

    def delete_run(self, record: Any) -> bool:
        """To the trash when the system has one; else, after asking, for good."""
        path = Path(record.path)
        if not self.ask_yes("Delete the run", f"Move the run {path.name} to the trash?\n\n{path}"):
            return False
        if not run_actions.move_to_trash(path):
            if not self.ask_yes("Delete the run", f"{path} cannot be moved to the trash here. Delete it for good? "
                                                  "This cannot be undone."):
                return False
            try:
                run_actions.delete_permanently(path)
            except OSError as error:
                self.show_message("Cannot delete", f"{path} could not be deleted: {error.strerror or error}.")
                self.refresh()
                return False
        self.refresh()
        return True

    # ---------------------------------------------------------------- runs
    def refresh(self) -> None:
        self.count_label.setText("reading runs…")
        self.run_list.refresh()

    def select_runs(self, run_dirs: list[str | Path]) -> None:
        """Show exactly these runs selected and compared (the end of a sweep), reading the
        folders again first so runs that just finished are there."""
        for parent in {Path(p).parent for p in run_dirs}:
            if parent not in self.folders():
                self._extra_session_folders.append(parent)
        self._update_folders()
        self.refresh()
        self.run_list.select_paths(list(run_dirs))

    def selected_records(self) -> list[Any]:
        return self.run_list.selected_records()

    def export_comparison(self, folder: str | Path) -> list[Path] | None:
        written = self.compare.export_to(folder)
        if written:
            self.count_label.setText(f"exported {count(len(written), 'file')} to {folder}")
        return written

    def on_run_finished(self) -> None:
        """A run ended: its row changes (and a new one appears) once the tab has been looked at."""
        if self._shown_once:
            self.refresh()

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        if not self._shown_once:  # read the runs when first looked at, not at start-up
            self._shown_once = True
            self.refresh()

    # ---------------------------------------------------------------- slots
    def _on_run_list_selection_changed(self, records: list) -> None:
        self._update_buttons()
        self._selection_timer.start()

    def _on_selection_timer_timeout(self) -> None:
        self.compare.show_runs(self.run_list.selected_records())

    def _on_run_list_loaded(self) -> None:
        records = self.run_list.records()
        broken = sum(1 for r in records if r.problem)
        self.count_label.setText(count(len(records), 'run') + (f", {broken} with problems" if broken else ""))
        self._selection_timer.stop()
        self.compare.show_runs(self.run_list.selected_records())  # curves of a run that went on

    def _on_run_list_load_failed(self, text: str) -> None:
        self.count_label.setText("could not read the runs")
        self.show_message("Cannot read the runs", text)

    def _on_project_loaded(self) -> None:
        self._update_folders()
        if self._shown_once:
            self.refresh()

    def _on_project_changed(self, path: str) -> None:
        if path == "output.output_dir":
            self._on_project_loaded()

    def _on_add_folder_button_clicked(self) -> None:
        self.choose_folder_to_add()

    def _on_export_button_clicked(self) -> None:
        self.choose_export_folder()

    def choose_folder_to_add(self) -> None:
        folder = self.ask_folder()
        if folder:
            self.add_folder(folder)

    def choose_export_folder(self) -> None:
        if not self.selected_records():
            self.show_message("Nothing to export", "Select the runs to compare first.")
            return
        folder = QFileDialog.getExistingDirectory(self, "Export the comparison into a folder",
                                                  str(self.output_folder()))
        if folder:
            self.export_comparison(folder)

    def _on_grid_button_clicked(self) -> None:
        self.open_grid_dialog()

    def open_grid_dialog(self) -> Any:
        from gui.grid_dialog import GridDialog

        records = self.selected_records()
        if not records:
            self.show_message("No runs selected", "Select the runs (or one run, for its checkpoints) to make a "
                                                  "grid of.")
            return None
        dialog = GridDialog(records, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()
        return dialog

    def _update_buttons(self) -> None:
        selected = self.run_list.selected_records()
        self.export_button.setEnabled(bool(selected))
        self.grid_button.setEnabled(bool(selected))
