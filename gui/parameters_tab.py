"""The Parameters tab: every parameter group as a form generated from the schema, with
the configuration's problems marked on the fields and listed at the top.

The image folders (``dataset.subsets``) are edited on the Dataset tab; their problems are
still listed here, and activating one emits :attr:`ParametersTab.problem_activated` so the
main window can take the person there.
"""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import (QCheckBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
                               QListWidget, QListWidgetItem, QScrollArea, QStyle, QVBoxLayout,
                               QWidget)

from core.config.schema import GROUP_TITLES, GROUPS
from core.training.validation import ERROR, Problem, validate
from gui import theme
from gui.form import MARK_COLORS, SHOWN_WHEN, FormBinding, describe_problem, form_specs
from gui.form_editors import FieldEditor
from gui.project import Project
from gui.vram_forecaster import VramForecaster
from gui.vram_panel import VramPanel

VALIDATE_DELAY_MS = 150  # typing a number validates once it pauses, not at every digit
_SUMMARY_ROWS = 3  # problems in view at once; more scroll


class ParametersTab(QWidget):
    # (has errors, the errors as sentences): the main window enables Start and lists why not
    validity_changed = Signal(bool, list)
    # a problem whose field is not on this tab (an image folder's) was clicked in the summary
    problem_activated = Signal(str)

    def __init__(self, project: Project, parent: QWidget | None = None, vram: VramForecaster | None = None) -> None:
        super().__init__(parent)
        self.project = project
        self.vram_panel = VramPanel(vram if vram is not None else VramForecaster(project, self))
        self.binding = FormBinding(project, self)
        self._validated: list[Problem] = []
        self._validity: tuple[bool, list[str]] | None = None
        self._forms: dict[str, QFormLayout] = {}
        self._boxes: dict[str, QGroupBox] = {}
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(VALIDATE_DELAY_MS)
        self._timer.timeout.connect(self._on_timer_timeout)
        self._grey_disabled_text()

        self.advanced = QCheckBox("Show advanced")
        self.advanced.setToolTip("Show the fields most trainings leave at their defaults")
        self.advanced.toggled.connect(self._on_advanced_toggled)
        self._status = QLabel()
        self._summary = QListWidget()
        self._summary.setObjectName("problemSummary")
        self._summary.setIconSize(QSize(16, 16))
        self._summary.itemClicked.connect(self._on_summary_item_clicked)
        self._summary.itemActivated.connect(self._on_summary_item_clicked)
        # The list's height is kept whether it lists problems or none (hidden, its place kept):
        # appearing or growing it would push the form down under the pointer.
        self._summary.addItem(QListWidgetItem(self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning), "x"))
        self._summary.setFixedHeight(self._summary.sizeHintForRow(0) * _SUMMARY_ROWS + 2 * self._summary.frameWidth() + 2)
        self._summary.clear()
        policy = self._summary.sizePolicy()
        policy.setRetainSizeWhenHidden(True)
        self._summary.setSizePolicy(policy)
        self._nav = QListWidget()
        self._nav.setObjectName("groupList")
        self._nav.setSpacing(3)
        self._nav.currentRowChanged.connect(self._on_nav_row_changed)
        self._scroll = QScrollArea()
        self._scroll.setWidgetResizable(True)
        self._scroll.setWidget(self._build_groups())
        self._scroll.verticalScrollBar().valueChanged.connect(self._on_scroll_value_changed)
        self._nav.setFixedWidth(self._nav.sizeHintForColumn(0) + 36)
        self.binding.refresh()  # with every field in place, so dependencies can be applied
        self._on_scroll_value_changed(0)

        top = QHBoxLayout()
        top.addWidget(self.advanced)
        top.addSpacing(16)
        top.addWidget(self._status, 1)
        body = QHBoxLayout()
        body.addWidget(self._nav)
        body.addWidget(self._scroll, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.vram_panel)
        layout.addWidget(self._summary)
        layout.addLayout(body, 1)

        project.loaded.connect(self._on_project_loaded)
        project.changed.connect(self._on_project_changed)
        self.binding.edit_problems_changed.connect(self._on_binding_edit_problems_changed)
        self._apply_visibility()
        self.validate_now()

    def _grey_disabled_text(self) -> None:
        # The app palette gives disabled widgets the same colours as enabled ones, so a field
        # switched off by another (max steps when training for epochs) would look editable.
        palette = self.palette()
        grey = palette.color(QPalette.ColorRole.PlaceholderText)
        for role in (QPalette.ColorRole.WindowText, QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText):
            palette.setColor(QPalette.ColorGroup.Disabled, role, grey)
        palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Base, palette.color(QPalette.ColorRole.Window))
        self.setPalette(palette)

    def _build_groups(self) -> QWidget:
        content = QWidget()
        column = QVBoxLayout(content)
        labels: list[QLabel] = []
        for group, cls in GROUPS.items():
            specs = form_specs(cls)
            if not specs:
                continue
            box = QGroupBox(GROUP_TITLES.get(group, group))
            box.setObjectName(f"group:{group}")
            form = QFormLayout(box)
            form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
            for spec in specs:
                row = self.binding.add_field(spec, f"{group}.{spec.name}", box)
                form.addRow(row.label, row.editor)
                labels.append(row.label)
            self._forms[group] = form
            self._boxes[group] = box
            column.addWidget(box)
            self._nav.addItem(GROUP_TITLES.get(group, group))
        # One label width for every group, so the fields line up down the whole page.
        width = max(label.sizeHint().width() for label in labels)
        for label in labels:
            label.setMinimumWidth(width)
        column.addStretch(1)
        return content

    # ---------------------------------------------------------------- public
    def problems(self) -> list[Problem]:
        """Refused edits and the configuration's problems, errors first."""
        return sorted(self.binding.edit_problems() + self._validated, key=lambda p: p.severity != ERROR)

    def error_messages(self) -> list[str]:
        return [describe_problem(p) for p in self.problems() if p.severity == ERROR]

    def editor(self, path: str) -> FieldEditor | None:
        row = self.binding.rows.get(path)
        return row.editor if row else None

    def validate_now(self) -> list[Problem]:
        """Validate at once (the tab otherwise waits for edits to pause) and show the result."""
        self._timer.stop()
        self._validated = validate(self.project.config, check_paths=True)
        self.binding.show_problems(self._validated)
        self._apply_visibility()
        self._update_summary()
        messages = self.error_messages()
        validity = (bool(messages), messages)
        if validity != self._validity:
            self._validity = validity
            self.validity_changed.emit(*validity)
        return self.problems()

    def reveal(self, path: str) -> bool:
        """Scroll to the field that shows ``path`` and focus it; False when not on this tab."""
        row = self.binding.row_for(path)
        if row is None:
            self.problem_activated.emit(path)
            return False
        if row.spec.info.advanced and not self.advanced.isChecked():
            self.advanced.setChecked(True)
        # Lay out now: a row just shown has no position yet to scroll to.
        self._scroll.widget().layout().activate()
        self._scroll.ensureWidgetVisible(row.editor, 0, 60)
        row.editor.focus_input()
        return True

    # ---------------------------------------------------------------- slots
    def _on_project_loaded(self) -> None:
        self.validate_now()  # a load is one event, not typing: no reason to wait

    def _on_project_changed(self, path: str) -> None:
        if any(path.strip() == controller for controller, _ in SHOWN_WHEN.values()):
            self._apply_visibility()  # the fields that follow it appear with the choice, not later
        self._timer.start()

    def _on_binding_edit_problems_changed(self) -> None:
        self._timer.start()

    def _on_timer_timeout(self) -> None:
        self.validate_now()

    def _on_advanced_toggled(self, _checked: bool) -> None:
        self._apply_visibility()

    def _on_summary_item_clicked(self, item: QListWidgetItem) -> None:
        self.reveal(item.data(Qt.ItemDataRole.UserRole))

    def _on_nav_row_changed(self, row: int) -> None:
        group = list(self._boxes)[row] if 0 <= row < len(self._boxes) else None
        if group is not None:
            self._scroll.verticalScrollBar().setValue(self._boxes[group].y())

    def _on_scroll_value_changed(self, value: int) -> None:
        # Keep the group list pointing at the section in view, without scrolling back.
        bar = self._scroll.verticalScrollBar()
        visible = [i for i, box in enumerate(self._boxes.values()) if not box.isHidden()]
        current = visible[-1] if value >= bar.maximum() else next(
            (i for i in reversed(visible) if list(self._boxes.values())[i].y() <= value + 8), 0)
        self._nav.blockSignals(True)
        self._nav.setCurrentRow(current)
        self._nav.blockSignals(False)

    # ---------------------------------------------------------------- views
    def model_family(self) -> str:
        """The family the project trains (with model.family "auto": the base model's own), whose
        fields the form shows; the setting itself when no family fits."""
        from core.models.family import UnsupportedFamily, family_for

        model = self.project.config.model
        try:
            return family_for(model.base_model, model.family).name
        except UnsupportedFamily:
            return str(model.family)

    def _apply_visibility(self) -> None:
        show_advanced = self.advanced.isChecked()
        family = self.model_family()
        shown_groups: set[str] = set()
        for row in self.binding.rows.values():
            group = row.path.split(".", 1)[0]
            # A field with an error stays in view even when it is hidden otherwise: advanced
            # fields with the box unticked, fields of another model family (SDXL's second
            # text encoder for an SD 1.x model). A field of another optimizer or network type
            # stays while any problem names it (a growth rate set for AdamW), so it can be reset.
            error = self.binding.has_error(row.path)
            visible = (show_advanced or not row.spec.info.advanced or error) and \
                (row.spec.info.applies_to(family) or error) and \
                (self.binding.in_context(row.path) or self.binding.has_problem(row.path))
            self._forms[group].setRowVisible(row.editor, visible)
            if visible:
                shown_groups.add(group)
        for index, (group, box) in enumerate(self._boxes.items()):
            box.setVisible(group in shown_groups)
            self._nav.item(index).setHidden(group not in shown_groups)

    def _update_summary(self) -> None:
        problems = self.problems()
        self._summary.clear()
        icons = {ERROR: QStyle.StandardPixmap.SP_MessageBoxCritical}
        for problem in problems:
            item = QListWidgetItem(describe_problem(problem))
            item.setIcon(self.style().standardIcon(icons.get(problem.severity, QStyle.StandardPixmap.SP_MessageBoxWarning)))
            item.setForeground(QColor(MARK_COLORS.get(problem.severity, theme.WARNING)))
            item.setData(Qt.ItemDataRole.UserRole, problem.path)
            item.setToolTip(f"{problem.severity}: {problem}")
            self._summary.addItem(item)
        n_errors = sum(p.severity == ERROR for p in problems)
        n_warnings = len(problems) - n_errors
        if not problems:
            self._status.setText("No problems: this configuration can be trained.")
            self._status.setStyleSheet(f"color: {theme.OK};")
        else:
            counts = [f"{n} {word}{'' if n == 1 else 's'}"
                      for n, word in ((n_errors, "error"), (n_warnings, "warning")) if n]
            self._status.setText(f"{', '.join(counts)} — click one to go to its field.")
            self._status.setStyleSheet(f"color: {theme.ERROR if n_errors else theme.WARNING};")
        self._summary.setVisible(bool(problems))
