"""The main window: the Dataset, Parameters, Training and Runs tabs over one Project, the File,
Runs and Help menus, remembered window state and last preset, and care for unsaved work."""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QSize, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import QFileDialog, QLabel, QMainWindow, QMessageBox, QTabWidget

from core import __version__
from core.system.paths import default_runs_dir, log_dir, user_data_dir, user_presets_dir
from core.config.presets import PresetError, builtin_preset_names, find_preset, load_preset
from core.system.resources import resource_path
from core.system.words import count
from gui.dialog_folders import remember_folder, start_folder, start_path
from gui.project import Project
from gui.screen import fit_to_screen, show_long_message
from gui.settings import settings

log = logging.getLogger("lorakiln.gui")
MAX_RECENT = 8
SAVE, DISCARD, CANCEL = "save", "discard", "cancel"
BUILTIN_MARK = "builtin-preset:"
PREFERRED_SIZE = QSize(1280, 860)


class MainWindow(QMainWindow):
    def __init__(self) -> None:
        super().__init__()
        self.project = Project()
        self._closing_after_run = False  # the person closed the window mid-run: close when it ends
        self._build_tabs()
        self._build_menus()
        self._dirty_label = QLabel()
        self.statusBar().addPermanentWidget(self._dirty_label)
        self._on_training_running_changed(False)  # "Ready", or why it cannot start
        self.project.loaded.connect(self._on_project_loaded)
        self.project.dirty_changed.connect(self._on_project_dirty_changed)
        self._update_title()
        # The first size fits the screen's available area; a remembered one larger than this
        # screen (saved on a bigger one) or partly off it is pulled back onto it.
        fit_to_screen(self, PREFERRED_SIZE)
        geometry = settings().value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
            fit_to_screen(self)
        # Hooks the tests replace: questions and messages that would block offscreen.
        self.ask_unsaved = self._ask_unsaved
        self.ask_stop_training = self._ask_stop_training
        self.show_message = lambda title, text: show_long_message(self, title, text)
        QTimer.singleShot(0, self._show_queue_load_problem)  # once the hooks above are in place

    # ------------------------------------------------------------------ building
    def _build_tabs(self) -> None:
        from gui.dataset_tab import DatasetTab
        from gui.parameters_tab import ParametersTab
        from gui.runs_tab import RunsTab
        from gui.training_tab import TrainingTab

        from gui.vram_forecaster import VramForecaster

        self.tabs = QTabWidget()
        self.dataset_tab = DatasetTab(self.project)
        # One VRAM forecast for both tabs' panels, at the largest bucket of the Dataset tab's plan.
        self.vram = VramForecaster(self.project, self)
        self.vram.set_plan(self.dataset_tab.plan)
        self.dataset_tab.plan_changed.connect(self.vram.set_plan)
        self.parameters_tab = ParametersTab(self.project, vram=self.vram)
        self.training_tab = TrainingTab(self.project, vram=self.vram)
        self.tabs.addTab(self.dataset_tab, "Dataset")
        self.tabs.addTab(self.parameters_tab, "Parameters")
        self.runs_tab = RunsTab(self.project)
        self.tabs.addTab(self.training_tab, "Training")
        self.tabs.addTab(self.runs_tab, "Runs")
        self.setCentralWidget(self.tabs)
        # The tabs' messages reach the person through this window's show_message hook.
        self.training_tab.run_finished.connect(self._on_training_run_finished)
        self.training_tab.queue_panel.sweep_finished.connect(self._on_queue_sweep_finished)
        self.parameters_tab.validity_changed.connect(self._on_parameters_validity_changed)
        self.parameters_tab.problem_activated.connect(self._on_parameters_problem_activated)
        messages = self.parameters_tab.error_messages()  # the tab checked once while being built
        self.training_tab.set_start_blocked(messages)
        self.training_tab.running_changed.connect(self._on_training_running_changed)
        self.runs_tab.resume_requested.connect(self._on_runs_resume_requested)
        self.runs_tab.train_again_requested.connect(self._on_runs_train_again_requested)

    def _action(self, menu, text: str, slot, shortcut=None) -> QAction:  # noqa: ANN001
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(shortcut)
        action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self._action(file_menu, "&New", self._on_new_triggered, QKeySequence.StandardKey.New)
        self._action(file_menu, "&Open preset…", self._on_open_triggered, QKeySequence.StandardKey.Open)
        builtin = file_menu.addMenu("Open &built-in preset")
        for name in builtin_preset_names():
            self._action(builtin, name, lambda _=False, n=name: self.open_preset(str(find_preset(n))))
        self.recent_menu = file_menu.addMenu("Open &recent")
        self._rebuild_recent_menu()
        file_menu.addSeparator()
        self._action(file_menu, "&Save", self._on_save_triggered, QKeySequence.StandardKey.Save)
        self._action(file_menu, "Save &as…", self._on_save_as_triggered, QKeySequence.StandardKey.SaveAs)
        file_menu.addSeparator()
        self._action(file_menu, "&Import Kohya config…", self._on_import_triggered)
        self._action(file_menu, "Inspect &LoRA file…", self._on_inspect_triggered)
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        runs_menu = self.menuBar().addMenu("&Runs")
        self._action(runs_menu, "Add to &queue", self._on_add_to_queue_triggered)
        self._action(runs_menu, "S&weep…", self._on_sweep_triggered)
        self._action(runs_menu, "&Run queue", self._on_run_queue_triggered)
        runs_menu.addSeparator()
        self._action(runs_menu, "Re&fresh run list", self._on_refresh_runs_triggered, QKeySequence.StandardKey.Refresh)
        self._action(runs_menu, "&Add runs folder…", self._on_add_runs_folder_triggered)
        self._action(runs_menu, "&Export comparison…", self._on_export_comparison_triggered)
        self._action(runs_menu, "Make &grid…", self._on_make_grid_triggered)
        help_menu = self.menuBar().addMenu("&Help")
        self._action(help_menu, "&About LoRA Kiln", self._on_about_triggered)
        self._action(help_menu, "Open &log folder", self._on_open_log_folder_triggered)

    # ------------------------------------------------------------------ presets
    def open_initial_preset(self) -> None:
        """The last preset of the previous session, else the demo project."""
        last = settings().value("project/last_preset", "") or ""
        if last.startswith(BUILTIN_MARK):  # a shipped preset is remembered by name, not path
            try:
                last = str(find_preset(last[len(BUILTIN_MARK):]))
            except PresetError:
                last = ""
        if last and Path(last).is_file() and self.open_preset(last, remember=False):
            return
        self.open_preset(str(find_preset("demo")), remember=False)

    def open_preset(self, path: str, remember: bool = True) -> bool:
        if not self._confirm_discard():
            return False
        try:
            loaded = load_preset(path)
        except PresetError as err:
            self.show_message("Cannot open preset", str(err))
            self.statusBar().showMessage(f"Could not open {path}")
            return False
        builtin = Path(path).resolve().is_relative_to(resource_path("presets").resolve())
        self.project.load(loaded, builtin=builtin)
        if remember and not builtin:
            self._remember(path)
        last = BUILTIN_MARK + Path(path).stem if builtin else str(Path(path).resolve())
        settings().setValue("project/last_preset", last)
        # A shipped preset is named, not located: its path is the install folder, which means nothing
        # to the person (and a copy of the program's folder is not where their presets live).
        self.statusBar().showMessage(f"Opened the built-in preset “{Path(path).stem}”" if builtin else f"Opened {path}")
        return True

    def save(self) -> bool:
        if self.project.path is None or self.project.builtin:
            return self.save_as()
        return self._save_to(self.project.path)

    def save_as(self, path: str | None = None) -> bool:
        if path is None:
            user_presets_dir().mkdir(parents=True, exist_ok=True)
            start = start_path("preset", f"{self.project.name}.toml", user_presets_dir())
            path, _ = QFileDialog.getSaveFileName(self, "Save preset as", start, "LoRA Kiln presets (*.toml)")
            if not path:
                return False
            remember_folder("preset", path)
            if not path.endswith(".toml"):
                path += ".toml"
        return self._save_to(Path(path))

    def _save_to(self, path: Path) -> bool:
        try:
            self.project.save(path)
        except OSError as err:
            self.show_message("Cannot save preset", f"{path}: {err.strerror or err}\nNothing was changed on disk.")
            return False
        self._remember(str(path))
        settings().setValue("project/last_preset", str(path.resolve()))
        self.statusBar().showMessage(f"Saved {path}")
        self._update_title()
        return True

    def import_kohya(self, paths: list[str]) -> bool:
        from core.kohya.import_config import KohyaImportError, import_kohya

        if not self._confirm_discard():
            return False
        try:
            result = import_kohya([Path(p) for p in paths])
        except KohyaImportError as err:
            self.show_message("Cannot import", str(err))
            return False
        from core.config.presets import LoadedPreset

        self.project.load(LoadedPreset(result.config, None, f"imported from {', '.join(Path(p).name for p in paths)}"))
        self.project.mark_dirty()  # an imported config is unsaved work
        from core.kohya.option_effects import what_it_does

        # The same counts as `lorakiln import-kohya`'s last line, then each list under its
        # count (every item, so the numbers match what is listed), with what each key not
        # carried over would have done in sd-scripts.
        report = [result.summary() + "."]
        if result.unsupported:
            report.append(f"Not supported by LoRA Kiln ({len(result.unsupported)}):")
            for key, value, reason in result.unsupported:
                effect = what_it_does(key)
                report.append(f"  {key} = {value!r}: {reason}" + (f" (in sd-scripts: {effect})" if effect else ""))
        if result.ignored:
            report.append(f"Ignored, no effect ({len(result.ignored)}):")
            report += [f"  {key}: {reason}" for key, _value, reason in result.ignored]
        if result.mapped:
            report.append(f"Mapped ({len(result.mapped)}):")
            report += [f"  {m.key} -> {m.field}" for m in sorted(result.mapped, key=lambda m: m.field)]
        if result.warnings:
            report.append(f"Warnings ({len(result.warnings)}):")
            report += [f"  {warning}" for warning in result.warnings]
        self.last_import_report = "\n".join(report)
        self.show_message("Kohya config imported", self.last_import_report)
        return True

    def _remember(self, path: str) -> None:
        store = settings()
        recent = [p for p in (store.value("project/recent", []) or []) if p != str(Path(path).resolve())]
        recent.insert(0, str(Path(path).resolve()))
        store.setValue("project/recent", recent[:MAX_RECENT])
        self._rebuild_recent_menu()

    def _rebuild_recent_menu(self) -> None:
        self.recent_menu.clear()
        recent = settings().value("project/recent", []) or []
        if isinstance(recent, str):
            recent = [recent]
        for path in recent:
            self._action(self.recent_menu, path, lambda _=False, p=path: self.open_preset(p))
        self.recent_menu.setEnabled(bool(recent))

    # ------------------------------------------------------------------ unsaved work
    def _confirm_discard(self) -> bool:
        if not self.project.dirty:
            return True
        answer = self.ask_unsaved()
        if answer == SAVE:
            return self.save()
        return answer == DISCARD

    def _ask_unsaved(self) -> str:
        box = QMessageBox(QMessageBox.Icon.Question, "Unsaved changes",
                          f"Save the changes to {self.project.name}?", parent=self)
        box.setStandardButtons(QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                               | QMessageBox.StandardButton.Cancel)
        choice = box.exec()
        return {QMessageBox.StandardButton.Save: SAVE,
                QMessageBox.StandardButton.Discard: DISCARD}.get(QMessageBox.StandardButton(choice), CANCEL)

    def _ask_stop_training(self) -> bool:
        return QMessageBox.question(self, "Training is running",
                                    "Stop the training, save the LoRA and quit?") == QMessageBox.StandardButton.Yes

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt's name
        if self.training_tab.is_running():
            # Never wait for the save in the GUI thread: ask the run to stop, keep the window
            # open (and responsive) until it has ended, and close again then.
            if self._closing_after_run or not self.ask_stop_training():
                event.ignore()
                return
            self._closing_after_run = True
            self.training_tab.queue_panel.finish_after_current()
            self.training_tab.stop()
            self.statusBar().showMessage("Stopping and saving… the window closes when the LoRA is saved")
            event.ignore()
            return
        self._closing_after_run = False
        if not self._confirm_discard():
            event.ignore()
            return
        settings().setValue("window/geometry", self.saveGeometry())
        self.dataset_tab.shutdown()  # stop background scans and thumbnail loads
        self.vram.shutdown()
        event.accept()

    # ------------------------------------------------------------------ slots
    def _update_title(self) -> None:
        star = "*" if self.project.dirty else ""
        self.setWindowTitle(f"{self.project.name}{star} — LoRA Kiln")

    def _on_project_loaded(self) -> None:
        self._update_title()

    def _on_project_dirty_changed(self, dirty: bool) -> None:
        self._dirty_label.setText("unsaved changes" if dirty else "")
        self._update_title()

    def _on_parameters_validity_changed(self, has_errors: bool, messages: list) -> None:
        self.training_tab.set_start_blocked(list(messages) if has_errors else [])
        if self.training_tab.is_running():
            return
        # The idle line follows the block ("Ready" beside a "Cannot start" would contradict
        # it); a message of its own ("Opened …") stays until the next one.
        current = self.statusBar().currentMessage()
        if not current or current == "Ready" or current.startswith("Cannot start: "):
            self._on_training_running_changed(False)

    def _on_parameters_problem_activated(self, path: str) -> None:
        if path.startswith("dataset.subsets"):
            self.tabs.setCurrentWidget(self.dataset_tab)

    def _on_training_running_changed(self, running: bool) -> None:
        blocked = self.training_tab.blocked_reasons
        self.statusBar().showMessage("Training…" if running else
                                     f"Cannot start: {blocked[0]}" if blocked else "Ready")

    def _on_training_run_finished(self, _result: object) -> None:
        self.runs_tab.on_run_finished()
        if self._closing_after_run:
            QTimer.singleShot(0, self.close)  # after the other listeners have seen the run end

    def _on_queue_sweep_finished(self, _sweep_id: str, run_dirs: list) -> None:
        """The last run of a sweep ended: compare exactly its runs."""
        self.tabs.setCurrentWidget(self.runs_tab)
        self.runs_tab.select_runs(run_dirs)
        self.statusBar().showMessage(f"Sweep finished: comparing its {count(len(run_dirs), 'run')}")

    def _show_queue_load_problem(self) -> None:
        problem = self.training_tab.queue.load_problem
        if problem:
            self.show_message("The queue could not be read", problem[:1].upper() + problem[1:] + ".")

    def _on_add_to_queue_triggered(self) -> None:
        if self.training_tab.queue_button.isEnabled():
            self.training_tab.queue_panel.add_project(self.project)
        else:
            self.show_message("Cannot queue", self.training_tab.queue_button.toolTip())

    def _on_sweep_triggered(self) -> None:
        self.training_tab.queue_panel.open_sweep_dialog(self.project)

    def _on_run_queue_triggered(self) -> None:
        self.tabs.setCurrentWidget(self.training_tab)
        self.training_tab.queue_panel.run()

    def _on_refresh_runs_triggered(self) -> None:
        self.tabs.setCurrentWidget(self.runs_tab)
        self.runs_tab.refresh()

    def _on_add_runs_folder_triggered(self) -> None:
        self.tabs.setCurrentWidget(self.runs_tab)
        self.runs_tab.choose_folder_to_add()

    def _on_export_comparison_triggered(self) -> None:
        self.tabs.setCurrentWidget(self.runs_tab)
        self.runs_tab.choose_export_folder()

    def _on_make_grid_triggered(self) -> None:
        self.tabs.setCurrentWidget(self.runs_tab)
        self.runs_tab.open_grid_dialog()

    def _on_new_triggered(self) -> None:
        if self._confirm_discard():
            self.project.new()

    def _on_open_triggered(self) -> None:
        start = str(start_folder("preset", user_presets_dir()))
        path, _ = QFileDialog.getOpenFileName(self, "Open preset", start, "LoRA Kiln presets (*.toml)")
        if path:
            remember_folder("preset", path)
            self.open_preset(path)

    def _on_save_triggered(self) -> None:
        self.save()

    def _on_save_as_triggered(self) -> None:
        self.save_as()

    def _on_import_triggered(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(
            self, "Import a Kohya config (and its dataset config)",
            str(start_folder("kohya_config")), "Kohya configs (*.json *.toml);;All files (*)")
        if paths:
            remember_folder("kohya_config", paths[0])
            self.import_kohya(paths)

    def _on_inspect_triggered(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Inspect LoRA", str(start_folder("lora", default_runs_dir())),
                                              "LoRA files (*.safetensors)")
        if path:
            remember_folder("lora", path)
            from gui.inspect_dialog import InspectDialog

            InspectDialog(path, self).show()

    def _on_about_triggered(self) -> None:
        # Everything the app writes lives in per-user folders, never in its own (a frozen
        # build may sit in a read-only place): say where, so people can find and back it up.
        import html
        import sys

        from core.system.paths import settings_dir
        from core.training.self_test import how_installed, result_file

        running = how_installed()
        if getattr(sys, "frozen", False):
            running += f" in {Path(sys.executable).parent}"
        places = [("Data", user_data_dir()), ("Runs (when a preset names no output folder)", default_runs_dir()),
                  ("Your presets", user_presets_dir()), ("Logs", log_dir()),
                  ("Settings", settings().fileName() or settings_dir()), ("Last self-test result", result_file())]
        rows = "".join(f"<tr><td>{html.escape(label)}:&nbsp;</td><td>{html.escape(str(path))}</td></tr>"
                       for label, path in places)
        QMessageBox.about(self, "About LoRA Kiln",
                          f"<b>LoRA Kiln {__version__}</b><p>Trains Stable Diffusion LoRAs in the Kohya style and "
                          "shows what the training does while it does it.</p>"
                          f"<p>Running: {html.escape(running)}<br>Python {sys.version.split()[0]}</p>"
                          f"<table>{rows}</table>"
                          "<p>Check an installation with <code>lorakiln --self-test</code>.</p>")

    def _on_open_log_folder_triggered(self) -> None:
        self.open_log_folder()

    def open_log_folder(self) -> bool:
        from gui.folders import open_folder

        try:
            log_dir().mkdir(parents=True, exist_ok=True)
        except OSError as error:
            self.show_message("Cannot open the log folder", f"{log_dir()} cannot be made: "
                                                            f"{error.strerror or error}. Check that you can write there.")
            return False
        return open_folder(log_dir(), "log folder", self.show_message)

    def _on_runs_resume_requested(self, run_dir: str) -> None:
        if self.training_tab.resume_run(run_dir):
            self.tabs.setCurrentWidget(self.training_tab)

    def _on_runs_train_again_requested(self, run_dir: str) -> None:
        """Load a run's settings into the form, as an unsaved copy: Save asks for a new file,
        so the run's own config.toml is never overwritten."""
        from core.training.run_folder import CONFIG

        if not self._confirm_discard():
            return
        path = Path(run_dir) / CONFIG
        try:
            loaded = load_preset(path)
        except PresetError as error:
            self.show_message("Cannot load the run's settings", f"{path}: {error}")
            return
        self.project.load(loaded, builtin=True)
        self.tabs.setCurrentWidget(self.parameters_tab)
        self.statusBar().showMessage(f"Loaded the settings of {Path(run_dir).name}; Save as… keeps them")
