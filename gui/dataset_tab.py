"""The Dataset tab: image folders, the live bucket plan, thumbnails with their crops, captions.

Two speeds of update, because they cost very differently: a change to the folders rescans
the disk (headers and captions, in a worker thread, debounced while the person edits),
while a change to resolution, buckets, batch size or duration re-plans the cached scan
on the GUI thread, which is pure arithmetic and instant even for thousands of images.
The plan shown is the one the trainer trains by (``core.data.plan.plan_from_scan``).
"""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import QItemSelectionModel, QModelIndex, QObject, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QComboBox, QHBoxLayout, QLabel, QListView,
                               QProgressBar, QPushButton, QSplitter, QVBoxLayout, QWidget)

from core.data.buckets import BucketError
from core.data.scan import ScanResult
from core.data.dataset_plan import DatasetPlan, PlanImage
from core.data.masks import mask_files, mask_source, masking_on
from core.data.plan import plan_from_scan
from core.system.words import count
from gui import theme
from gui.caption_editor import CaptionEditor
from gui.form import FormBinding, spec_at
from gui.dataset_scan import DatasetScanner
from gui.plan_view import PlanView, bucket_label
from gui.project import Project
from gui.subsets_panel import SubsetsPanel
from gui.thumbnails import (IMAGE_ROLE, THUMB, Key, ThumbnailLoader, ThumbnailModel, decode_alpha_mask,
                            decode_folder_mask, image_key)

Bucket = tuple[int, int]
RESCAN_DELAY_MS = 300  # folder edits come in bursts (typing a path, spinning repeats)
PLAN_INPUTS = ("dataset.resolution", "training.batch_size")  # edited here too, next to the plan they change


class DatasetTab(QWidget):
    plan_changed = Signal(object)  # DatasetPlan, or None while the dataset cannot be planned
    scan_started = Signal()
    scan_finished = Signal(object)  # ScanResult

    def __init__(self, project: Project, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.project = project
        self._scan: ScanResult | None = None
        self._plan: DatasetPlan | None = None
        self._error = ""
        self._filter: Bucket | None = None
        self._filter_choices: list[Bucket | None] = [None]

        self.scanner = DatasetScanner(self)
        self.loader = ThumbnailLoader(THUMB, self)
        self.mask_loaders = {"folder": ThumbnailLoader(THUMB, self, decode=decode_folder_mask),
                             "alpha": ThumbnailLoader(THUMB, self, decode=decode_alpha_mask)}
        self.thumbnail_model = ThumbnailModel(self.loader, self, mask_loaders=self.mask_loaders)
        self._masks: dict[str, tuple[str, Key]] = {}  # image path -> (kind, mask key), while shown
        self.show_masks = QCheckBox("Show masks")
        self.show_masks.setChecked(True)
        self.show_masks.setToolTip("Tint what each image's loss mask leaves out (masked loss: the tinted "
                                   "area teaches nothing). Needs masked loss with a mask folder, or alpha masks.")
        self.subsets = SubsetsPanel(project)
        self.plan_view = PlanView()
        # The plan's own inputs beside it, bound to the same config values as the Parameters tab.
        self.binding = FormBinding(project, self)
        self.plan_inputs = self._make_plan_inputs()
        self.caption_editor = CaptionEditor()
        self.thumbnails = self._make_thumbnail_view()
        self.filter_combo = QComboBox()
        self.filter_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.scan_status = QLabel()
        self.scan_progress = QProgressBar()
        self.scan_progress.setMaximumWidth(180)
        self.cancel_button = QPushButton("Cancel")
        self._rescan_timer = QTimer(self)
        self._rescan_timer.setSingleShot(True)
        self._rescan_timer.setInterval(RESCAN_DELAY_MS)
        self._build_layout()
        self._set_scanning(False)

        self._rescan_timer.timeout.connect(self._on_rescan_timer_timeout)
        self.scanner.progress.connect(self._on_scanner_progress)
        self.scanner.finished.connect(self._on_scanner_finished)
        self.scanner.failed.connect(self._on_scanner_failed)
        self.scanner.cancelled.connect(self._on_scanner_cancelled)
        self.cancel_button.clicked.connect(self._on_cancel_button_clicked)
        self.show_masks.toggled.connect(self._on_show_masks_toggled)
        self.filter_combo.currentIndexChanged.connect(self._on_filter_combo_changed)
        self.plan_view.bucket_clicked.connect(self._on_plan_view_bucket_clicked)
        self.thumbnails.selectionModel().currentChanged.connect(self._on_thumbnails_current_changed)
        self.caption_editor.saved.connect(self._on_caption_editor_saved)
        self.caption_editor.copy_demo_requested.connect(self._on_caption_editor_copy_demo_requested)
        project.changed.connect(self._on_project_changed)
        project.loaded.connect(self._on_project_loaded)
        self.rescan()  # the project may have been loaded before this tab was made

    # ---------------------------------------------------------------- building
    def _make_thumbnail_view(self) -> QListView:
        view = QListView()
        view.setViewMode(QListView.ViewMode.IconMode)
        view.setUniformItemSizes(True)  # lets the view lay out thousands of items without asking each
        view.setIconSize(QSize(THUMB, THUMB))
        view.setGridSize(QSize(THUMB + 16, THUMB + 26))
        view.setResizeMode(QListView.ResizeMode.Adjust)
        view.setMovement(QListView.Movement.Static)
        view.setLayoutMode(QListView.LayoutMode.Batched)
        view.setBatchSize(500)
        view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        view.setWordWrap(False)
        view.setModel(self.thumbnail_model)
        return view

    def _make_plan_inputs(self) -> QWidget:
        box = QWidget()
        row = QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        for path in PLAN_INPUTS:
            field = self.binding.add_field(spec_at(path), path, box)
            field.editor.setObjectName(f"plan:{path}")  # the Parameters tab's editor keeps the bare path
            row.addWidget(field.label)
            row.addWidget(field.editor, 1)
        return box

    def _build_layout(self) -> None:
        plan = QWidget()
        plan_layout = QVBoxLayout(plan)
        plan_layout.setContentsMargins(0, 0, 0, 0)
        plan_layout.addWidget(self.plan_inputs)
        plan_layout.addWidget(self.plan_view, 1)
        left = QSplitter(Qt.Orientation.Vertical)
        left.addWidget(self.subsets)
        left.addWidget(plan)
        left.setSizes([330, 520])

        top_row = QHBoxLayout()
        top_row.addWidget(QLabel("Bucket:"))
        top_row.addWidget(self.filter_combo)
        top_row.addWidget(self.show_masks)
        top_row.addStretch(1)
        top_row.addWidget(self.scan_status)
        top_row.addWidget(self.scan_progress)
        top_row.addWidget(self.cancel_button)
        grid = QWidget()
        grid_layout = QVBoxLayout(grid)
        grid_layout.setContentsMargins(0, 0, 0, 0)
        grid_layout.addLayout(top_row)
        grid_layout.addWidget(self.thumbnails, 1)
        right = QSplitter(Qt.Orientation.Vertical)
        right.addWidget(grid)
        right.addWidget(self.caption_editor)
        right.setSizes([680, 170])

        main = QSplitter(Qt.Orientation.Horizontal)
        main.addWidget(left)
        main.addWidget(right)
        main.setSizes([500, 700])
        layout = QVBoxLayout(self)
        layout.addWidget(main)

    # ---------------------------------------------------------------- public
    @property
    def plan(self) -> DatasetPlan | None:
        return self._plan

    @property
    def scan_result(self) -> ScanResult | None:
        return self._scan

    @property
    def error(self) -> str:
        """Why there is no plan ('' when there is one)."""
        return self._error

    @property
    def scan_count(self) -> int:
        return self.scanner.count

    def rescan(self, *, now: bool = False) -> None:
        """Scan the folders again, after RESCAN_DELAY_MS unless ``now``."""
        if now:
            self._rescan_timer.stop()
            self._start_scan()
        else:
            self._rescan_timer.start()

    def replan(self) -> None:
        """Plan the cached scan with the project's current settings (no disk access)."""
        if self._scan is None:
            return
        config = self.project.config
        try:
            plan = plan_from_scan(self._scan, config.dataset, config.training)
        except BucketError as error:
            self._show_error(f"dataset.{error.field}: {error}", self._scan)
            return
        except ValueError as error:  # plan_steps' refusals: name them rather than crash
            self._show_error(str(error), self._scan)
            return
        self._apply_plan(plan)

    def set_bucket_filter(self, bucket: Bucket | None) -> None:
        index = self._filter_choices.index(bucket) if bucket in self._filter_choices else 0
        self.filter_combo.setCurrentIndex(index)

    def select_image(self, path: str) -> bool:
        row = self.thumbnail_model.row_of(path)
        if row < 0:
            return False
        index = self.thumbnail_model.index(row)
        self.thumbnails.selectionModel().setCurrentIndex(index, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        self.thumbnails.scrollTo(index)
        return True

    def shutdown(self) -> None:
        """Stop the scan and thumbnail threads; the main window calls this before closing."""
        self._rescan_timer.stop()
        self.scanner.shutdown()
        self.loader.shutdown()
        for loader in self.mask_loaders.values():
            loader.shutdown()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt API
        self.shutdown()
        super().closeEvent(event)

    # ---------------------------------------------------------------- scanning
    def _start_scan(self) -> None:
        self.loader.cancel_pending()  # the old plan's thumbnails are no longer wanted first
        self._set_scanning(True)
        self.scan_status.setText("Scanning…")
        self.scan_started.emit()
        self.scanner.start(self.project.config.dataset, self.project.base_dir)

    def _set_scanning(self, scanning: bool) -> None:
        self.scan_progress.setVisible(scanning)
        self.cancel_button.setVisible(scanning)
        if scanning:
            self.scan_progress.setRange(0, 0)  # busy until the first count arrives

    def _on_rescan_timer_timeout(self) -> None:
        self._start_scan()

    def _on_scanner_progress(self, done: int, total: int) -> None:
        self.scan_progress.setRange(0, max(total, 1))
        self.scan_progress.setValue(done)
        self.scan_status.setText(f"Scanning {done} / {count(total, 'file')}…")

    def _on_scanner_finished(self, result: ScanResult, seconds: float) -> None:
        self._set_scanning(False)
        self._scan = result
        files = len(result.images) + len(result.skipped)
        self.scan_status.setText(f"Scanned {count(files, 'file')} in {seconds:.2f} s")
        self.scan_finished.emit(result)
        self.replan()

    def _on_scanner_failed(self, message: str) -> None:
        self._set_scanning(False)
        self._scan = None
        self.scan_status.setText("Scan failed")
        self._show_error(message, None)

    def _on_scanner_cancelled(self) -> None:
        self._set_scanning(False)
        self.scan_status.setText("Scan cancelled" + (": showing the previous scan" if self._scan else ""))

    def _on_cancel_button_clicked(self) -> None:
        self._rescan_timer.stop()
        self.scanner.cancel()

    # ---------------------------------------------------------------- the plan
    def _apply_plan(self, plan: DatasetPlan) -> None:
        self._plan, self._error = plan, ""
        self.plan_view.set_plan(plan)
        self._refresh_masks()
        self._rebuild_filter(plan)
        self._show_filtered()
        self.plan_changed.emit(plan)

    def _show_error(self, message: str, scan: ScanResult | None) -> None:
        self._plan, self._error = None, message
        self.plan_view.set_error(message, scan)
        self._rebuild_filter(None)
        self.thumbnail_model.set_images([])
        self.caption_editor.show_image(None, None)
        self.plan_changed.emit(None)

    def _rebuild_filter(self, plan: DatasetPlan | None) -> None:
        per_bucket: dict[Bucket, int] = {}
        for image in plan.images if plan else []:
            per_bucket[image.bucket] = per_bucket.get(image.bucket, 0) + 1
        buckets = sorted(per_bucket, key=lambda b: (b[0] / b[1], b))
        self._filter_choices = [None, *buckets]
        if self._filter not in per_bucket:
            self._filter = None
        self.filter_combo.blockSignals(True)
        self.filter_combo.clear()
        self.filter_combo.addItem(f"All buckets ({count(sum(per_bucket.values()), 'image')})")
        for bucket in buckets:
            self.filter_combo.addItem(f"{bucket_label(bucket)} ({count(per_bucket[bucket], 'image')})")
        self.filter_combo.setCurrentIndex(self._filter_choices.index(self._filter))
        self.filter_combo.blockSignals(False)
        self.plan_view.histogram.set_selected(self._filter)

    def _show_filtered(self) -> None:
        current = self.caption_editor.image
        images = self._plan.images if self._plan else []
        if self._filter is not None:
            images = [image for image in images if image.bucket == self._filter]
        self.thumbnail_model.set_images(images)
        if current is None or not self.select_image(str(current.record.path)):
            self.caption_editor.show_image(None, None)
        else:
            self._show_selected()  # the same image, perhaps in a new bucket

    # ---------------------------------------------------------------- masks
    def _refresh_masks(self) -> None:
        """Where each planned image's mask is, found once per plan (listing each mask folder
        once), and the toggle enabled only when the run would use masks."""
        config = self.project.config.dataset
        on = self._plan is not None and masking_on(config)
        self.show_masks.setEnabled(on)
        self._masks = {}
        if on and self.show_masks.isChecked():
            assert self._plan is not None
            folders: dict[str, dict] = {}
            for image in self._plan.images:
                subset = self._plan.subsets[image.record.subset_index].params
                kind = mask_source(subset, config.masked_loss)
                if kind == "alpha":
                    self._masks[str(image.record.path)] = (kind, image_key(image))
                elif kind == "folder":
                    found = folders.setdefault(subset.mask_dir, mask_files(subset.mask_dir)).get(image.record.path.stem)
                    if found is not None:
                        self._masks[str(image.record.path)] = (kind, (str(found), _mtime_ns(found)))
        self.thumbnail_model.set_mask_source(self._mask_of if self._masks else None)

    def _mask_of(self, image: PlanImage) -> tuple[str, Key] | None:
        return self._masks.get(str(image.record.path))

    def _on_show_masks_toggled(self, checked: bool) -> None:
        self._refresh_masks()

    def _on_filter_combo_changed(self, index: int) -> None:
        if not 0 <= index < len(self._filter_choices):
            return
        self._filter = self._filter_choices[index]
        self.plan_view.histogram.set_selected(self._filter)
        self._show_filtered()

    def _on_plan_view_bucket_clicked(self, bucket: Bucket | None) -> None:
        self.set_bucket_filter(bucket)

    # ---------------------------------------------------------------- selection and captions
    def _show_selected(self) -> None:
        image: PlanImage | None = self.thumbnails.currentIndex().data(IMAGE_ROLE)
        subset = None
        if image is not None and self._plan is not None and image.record.subset_index < len(self._plan.subsets):
            subset = self._plan.subsets[image.record.subset_index]
        self.caption_editor.show_image(image, subset)

    def _on_thumbnails_current_changed(self, current: QModelIndex, previous: QModelIndex) -> None:
        self._show_selected()

    def _on_caption_editor_saved(self, path: str) -> None:
        # Buckets stay, but the trained caption and the tag frequency changed: rescan now.
        self.rescan(now=True)

    def ask_copy_folder(self) -> str:
        """The folder to copy the demo dataset into (a hook tests replace)."""
        from PySide6.QtWidgets import QFileDialog

        from gui.dialog_folders import start_folder

        return QFileDialog.getExistingDirectory(self, "Copy the demo dataset into this folder",
                                                str(start_folder("dataset")))

    def copy_demo_dataset(self, parent: str) -> Path | None:
        """Copy the shipped demo dataset into ``parent`` and point the project at the copy."""
        from gui.demo_copy import copy_demo_dataset, point_at_copy
        from gui.dialog_folders import inside_app, remember_folder

        if inside_app(parent):
            self.caption_editor.status.setText(f"<span style='color:{theme.ERROR}'>{html.escape(parent)} is inside "
                                               "the app's own folder: choose one of your folders.</span>")
            return None
        try:
            copy = copy_demo_dataset(Path(parent))
        except OSError as error:
            self.caption_editor.status.setText(
                f"<span style='color:{theme.ERROR}'>Cannot copy the demo dataset into {html.escape(parent)}: "
                f"{html.escape(error.strerror or str(error))}</span>")
            return None
        remember_folder("dataset", parent)
        self.project.replace_subsets(point_at_copy(self.project.config.dataset.subsets, copy))
        self.rescan(now=True)
        return copy

    def _on_caption_editor_copy_demo_requested(self) -> None:
        parent = self.ask_copy_folder()
        if parent:
            self.copy_demo_dataset(parent)

    # ---------------------------------------------------------------- the project
    def _on_project_changed(self, path: str) -> None:
        if path.startswith("dataset.subsets"):
            self.rescan()
        elif path.startswith(("dataset.", "training.")):
            self.replan()

    def _on_project_loaded(self) -> None:
        self._scan = None  # a different dataset: never re-plan the old scan with the new settings
        self.rescan(now=True)


def _mtime_ns(path) -> int:  # noqa: ANN001 - a Path
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0
