"""The "Make grid" dialog of the Runs tab: a labelled image grid of the selected runs' LoRAs (or of
one run's checkpoints) by prompts, seeds or sizes, generated off the GUI thread with a progress
bar and a Cancel button, shown when done and saved as a PNG beside the first run."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QSize, Qt, Signal, Slot
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (QButtonGroup, QCheckBox, QComboBox, QDialog, QDoubleSpinBox, QFileDialog,
                               QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit, QProgressBar,
                               QPushButton, QRadioButton, QScrollArea, QVBoxLayout, QWidget)

from core.system.words import count
from gui import theme
from gui.screen import fit_to_screen

COLUMN_KINDS = {"prompts": "one column per prompt", "seeds": "the first prompt, one column per seed",
                "resolutions": "the first prompt, one column per size"}
GRIDS_DIR = "grids"
_SIZE = re.compile(r"^\s*(\d+)\s*[x×]\s*(\d+)\s*$")


def parse_seeds(text: str) -> list[int]:
    """"1, 2, 3" -> [1, 2, 3]; raises ValueError naming the bad entry."""
    seeds = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if not part.isdigit():
            raise ValueError(f"seeds: '{part}' is not a whole number; write e.g. 1, 2, 3")
        seeds.append(int(part))
    return seeds


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """"512x512, 768x512" -> [(512, 512), (768, 512)]; raises ValueError naming the bad entry."""
    sizes = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _SIZE.match(part)
        if not match:
            raise ValueError(f"sizes: '{part}' is not WIDTHxHEIGHT; write e.g. 512x512, 768x768")
        sizes.append((int(match.group(1)), int(match.group(2))))
    return sizes


def to_qimage(image: Any) -> QImage:
    """A PIL image as a QImage that owns its pixels."""
    rgba = image.convert("RGBA")
    data = rgba.tobytes("raw", "RGBA")
    return QImage(data, rgba.width, rgba.height, 4 * rgba.width, QImage.Format.Format_RGBA8888).copy()


class _GridJob(QObject):
    """make_grid in a plain thread; its progress and outcome come back as queued signals."""

    progress = Signal(int, int)
    finished = Signal(str, object)  # "done" (image), "cancelled" (None), "failed" (message)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.cancel_event = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, spec: Any) -> None:
        self.thread = threading.Thread(target=self._main, args=(spec,), daemon=True, name="lorakiln-grid")
        self.thread.start()

    def _main(self, spec: Any) -> None:
        from core.studies.grid import GridCancelled, GridError, make_grid

        try:
            image = make_grid(spec, lambda done, total: self.progress.emit(done, total), self.cancel_event.is_set)
        except GridCancelled:
            self._finish("cancelled", None)
        except GridError as error:
            self._finish("failed", str(error))
        except Exception as error:  # noqa: BLE001 - the person must see every failure
            self._finish("failed", f"Making the grid failed: {type(error).__name__}: {error}")
        else:
            self._finish("done", image)

    def _finish(self, outcome: str, value: object) -> None:
        try:
            self.finished.emit(outcome, value)
        except RuntimeError:  # the dialog was closed while the grid was being made
            pass


class GridDialog(QDialog):
    grid_done = Signal(str)  # "done", "cancelled" or "failed"

    def __init__(self, records: list[Any], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Make a grid")
        self.records = [r for r in records if r.config is not None]
        self.image = None
        self.spec = None
        self.saved_path: Path | None = None
        self._job: _GridJob | None = None
        self._build()
        self._fill_defaults()

    # ---------------------------------------------------------------- layout
    def _build(self) -> None:
        self.runs_radio = QRadioButton(f"the selected runs ({len(self.records)})")
        self.checkpoints_radio = QRadioButton("the checkpoints of")
        self.run_combo = QComboBox()
        for record in self.records:
            self.run_combo.addItem(f"{record.name} ({record.folder})", str(record.path))
        group = QButtonGroup(self)
        group.addButton(self.runs_radio)
        group.addButton(self.checkpoints_radio)
        self.runs_radio.setChecked(True)
        self.base_row_box = QCheckBox("add a row without LoRA (the base model)")
        rows = QVBoxLayout()
        rows.addWidget(self.runs_radio)
        checkpoints = QHBoxLayout()
        checkpoints.addWidget(self.checkpoints_radio)
        checkpoints.addWidget(self.run_combo, 1)
        rows.addLayout(checkpoints)
        rows.addWidget(self.base_row_box)

        self.columns_combo = QComboBox()
        for kind, text in COLUMN_KINDS.items():
            self.columns_combo.addItem(f"{kind} — {text}", kind)
        self.prompts_edit = QPlainTextEdit()
        self.prompts_edit.setPlaceholderText("One prompt per line, Kohya style: a prompt --n negative --w 512 --h 512 "
                                             "--s 20 --l 7 --d 1 (seed)")
        self.prompts_edit.setMaximumHeight(90)
        self.seeds_edit = QLineEdit("1, 2, 3")
        self.sizes_edit = QLineEdit("512x512, 768x768")
        self.strength_spin = QDoubleSpinBox()
        self.strength_spin.setRange(0.0, 2.0)
        self.strength_spin.setSingleStep(0.1)
        self.strength_spin.setValue(1.0)
        self.strength_spin.setToolTip("How strongly each LoRA acts (0 = the base model alone, 1 = as trained)")
        form = QFormLayout()
        form.addRow("Rows", rows)
        form.addRow("Columns", self.columns_combo)
        form.addRow("Prompts", self.prompts_edit)
        form.addRow("Seeds", self.seeds_edit)
        form.addRow("Sizes", self.sizes_edit)
        form.addRow("LoRA strength", self.strength_spin)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("not started")
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.generate_button = QPushButton("Generate")
        self.generate_button.clicked.connect(self.generate)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop after the image being generated")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.save_button = QPushButton("Save as…")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(self._on_save_button_clicked)
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.close)
        buttons = QHBoxLayout()
        buttons.addWidget(self.progress, 1)
        for button in (self.generate_button, self.cancel_button, self.save_button, self.close_button):
            buttons.addWidget(button)
        self.picture = QLabel("The grid appears here.")
        self.picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
        scroll = QScrollArea()
        scroll.setWidget(self.picture)
        scroll.setWidgetResizable(True)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.message)
        layout.addWidget(scroll, 1)
        self.columns_combo.currentIndexChanged.connect(self._on_columns_combo_changed)
        fit_to_screen(self, QSize(900, 760))

    def _fill_defaults(self) -> None:
        if not self.records:
            self._say("None of the selected runs has readable settings; choose runs that trained.", error=True)
            self.generate_button.setEnabled(False)
            return
        first = self.records[0]
        self.prompts_edit.setPlainText(first.config.sampling.prompts.strip())
        with_checkpoints = [r for r in self.records if r.checkpoints]
        if len(self.records) == 1 and with_checkpoints:
            self.checkpoints_radio.setChecked(True)
        width, height = first.config.dataset.resolution
        self.sizes_edit.setText(f"{width}x{height}, {width + 256}x{height + 256}")
        self._on_columns_combo_changed()

    # ---------------------------------------------------------------- the spec
    def build_spec(self) -> Any:
        """The GridSpec the fields describe; raises GridError or ValueError naming the field."""
        from core.studies.compare import legend_labels
        from core.studies.grid import GridError, rows_from_runs, spec_from_run
        from core.config.prompts import PromptError, parse_prompts

        if self.checkpoints_radio.isChecked():
            run_dir = Path(self.run_combo.currentData())
            rows = rows_from_runs([run_dir], checkpoints=True)
            first = next(r for r in self.records if str(r.path) == str(run_dir))
        else:
            rows = rows_from_runs([Path(r.path) for r in self.records])
            first = self.records[0]
            if len(rows) == len(self.records) > 1:  # label rows by what sets the runs apart, as the legend does
                for row, label in zip(rows, legend_labels(self.records)):
                    row.label = label
        spec = spec_from_run(first.path, rows)
        try:
            spec.prompts = parse_prompts(self.prompts_edit.toPlainText(), first.config.sampling)
        except PromptError as error:
            raise GridError(f"prompts: {error}") from None
        spec.column_kind = self.columns_combo.currentData()
        spec.seeds = parse_seeds(self.seeds_edit.text()) if spec.column_kind == "seeds" else []
        spec.resolutions = parse_sizes(self.sizes_edit.text()) if spec.column_kind == "resolutions" else []
        spec.strength = self.strength_spin.value()
        spec.include_base_row = self.base_row_box.isChecked()
        return spec

    # ---------------------------------------------------------------- running
    def generate(self) -> bool:
        """Start making the grid in the background; False (the problem shown) when it cannot."""
        from core.studies.grid import GridError, check_spec

        if self.is_running():
            return False
        try:
            spec = self.build_spec()
            check_spec(spec)
        except (GridError, ValueError) as error:
            self._say(str(error), error=True)
            return False
        self.spec, self.image, self.saved_path = spec, None, None
        self._job = _GridJob(self)
        self._job.progress.connect(self._on_job_progress)
        self._job.finished.connect(self._on_job_finished)
        self._job.start(spec)
        self.progress.setRange(0, 0)
        self.progress.setFormat("loading the model…")
        self._say("Generating… (the window stays usable; Cancel stops after the current image)")
        self._set_running(True)
        return True

    def is_running(self) -> bool:
        return self._job is not None

    def cancel(self) -> None:
        if self._job is not None:
            self._job.cancel_event.set()
            self.cancel_button.setEnabled(False)
            self._say("Cancelling after the current image…")

    def save(self, path: str | Path) -> Path | None:
        """Save the grid as a PNG (with how it was made in a text chunk); None and a message on failure."""
        from core.studies.grid import GridError, save_grid

        if self.image is None:
            return None
        try:
            self.saved_path = save_grid(self.image, path, self.spec)
        except GridError as error:
            self._say(str(error), error=True)
            return None
        self._say(f"Saved {self.saved_path}")
        return self.saved_path

    @Slot(int, int)
    def _on_job_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(done)
        self.progress.setFormat(f"image {done}/{total}" if done else f"loading the model… ({count(total, 'image')})")

    @Slot(str, object)
    def _on_job_finished(self, outcome: str, value: object) -> None:
        self._job = None
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if outcome == "done" else 0)
        self.progress.setFormat(outcome)
        if outcome == "done":
            self.image = value
            pixmap = QPixmap.fromImage(to_qimage(value))
            self.picture.setPixmap(pixmap)
            self.picture.resize(pixmap.size())
            self.save(self._default_path())
        elif outcome == "cancelled":
            self._say("Cancelled: nothing was saved.")
        else:
            self._say(str(value), error=True)
        self._set_running(False)
        self.grid_done.emit(outcome)

    def _default_path(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(self.run_combo.currentData()) if self.checkpoints_radio.isChecked() else self.records[0].path
        return Path(run_dir) / GRIDS_DIR / f"{stamp}-{self.spec.column_kind}.png"

    def _set_running(self, running: bool) -> None:
        self.generate_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.save_button.setEnabled(not running and self.image is not None)

    def _say(self, text: str, *, error: bool = False) -> None:
        self.message.setText(text)
        self.message.setStyleSheet(f"color: {theme.ERROR}" if error else "")

    # ---------------------------------------------------------------- slots
    def _on_columns_combo_changed(self) -> None:
        kind = self.columns_combo.currentData()
        self.seeds_edit.setEnabled(kind == "seeds")
        self.sizes_edit.setEnabled(kind == "resolutions")

    def _on_save_button_clicked(self) -> None:
        start = str(self.saved_path or self._default_path())
        path, _ = QFileDialog.getSaveFileName(self, "Save the grid", start, "PNG images (*.png)")
        if path:
            self.save(path if path.lower().endswith(".png") else path + ".png")

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        self.cancel()  # a grid nobody will see need not finish
        super().closeEvent(event)
