"""Schema fields bound to a Project: the generic half of every parameters form.

:class:`FormBinding` makes a labelled editor for any schema field (``network.dim``,
``dataset.subsets[0].num_repeats``), writes edits through ``Project.set_value``, shows
``project.config`` again when a preset is loaded or a field changes elsewhere, and marks
fields with the problems that name them. It knows no field by name except through the
small declared tables below.
"""

from __future__ import annotations

import html
import re
import typing
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QLabel, QLineEdit, QWidget

from core.config.schema import (GROUP_TITLES, GROUPS, Duration, NetworkType, OptimizerType, Scheduler,
                                SubsetParams)
from core.config.params import FieldError, ParamSpec, param_specs, spec_for
from core.training.validation import ERROR, WARNING, Problem
from gui import theme
from gui.form_editors import FieldEditor, make_editor
from gui.form_values import format_float
from gui.project import Project

# Fields that only matter for some value of another field: dependent -> (controller, values
# for which the dependent is used). The form disables the dependent otherwise, so which of
# two alternatives wins is visible.
ENABLED_WHEN: dict[str, tuple[str, tuple[Any, ...]]] = {
    "training.max_train_epochs": ("training.duration", (Duration.EPOCHS,)),
    "training.max_train_steps": ("training.duration", (Duration.STEPS,)),
    "schedule.num_cycles": ("schedule.scheduler", (Scheduler.COSINE_WITH_RESTARTS,)),
    "schedule.power": ("schedule.scheduler", (Scheduler.POLYNOMIAL,)),
    "dataset.min_bucket_reso": ("dataset.enable_bucket", (True,)),
    "dataset.max_bucket_reso": ("dataset.enable_bucket", (True,)),
    "dataset.bucket_reso_steps": ("dataset.enable_bucket", (True,)),
    "dataset.bucket_no_upscale": ("dataset.enable_bucket", (True,)),
    "network.conv_dim": ("network.type", tuple(t for t in NetworkType if t.has_conv)),
    "network.conv_alpha": ("network.type", tuple(t for t in NetworkType if t.has_conv)),
    "network.dora_wd": ("network.type", tuple(t for t in NetworkType if t is not NetworkType.IA3)),
    "network.dropout": ("network.type", (NetworkType.LORA, NetworkType.LOCON)),
    # sd-scripts' networks.lora options (core/models/blocks.py): refused on the LyCORIS types.
    **{f"network.{name}": ("network.type", (NetworkType.LORA, NetworkType.LOCON))
       for name in ("rank_dropout", "module_dropout", "down_lr_weight", "mid_lr_weight", "up_lr_weight",
                    "block_lr_zero_threshold", "block_dims", "block_alphas")},
    "network.conv_block_dims": ("network.type", (NetworkType.LOCON,)),
    "network.conv_block_alphas": ("network.type", (NetworkType.LOCON,)),
    "network.lokr_factor": ("network.type", (NetworkType.LOKR,)),
    "network.lokr_full_matrix": ("network.type", (NetworkType.LOKR,)),
    "network.lokr_decompose_both": ("network.type", (NetworkType.LOKR,)),
    "network.train_text_encoder_1": ("network.train_text_encoder", (True,)),
    "network.train_text_encoder_2": ("network.train_text_encoder", (True,)),
    "optimizer.text_encoder_lr": ("network.train_text_encoder", (True,)),
    "optimizer.text_encoder_2_lr": ("network.train_text_encoder", (True,)),
}

# Fields that mean nothing outside some value of another field are hidden there, not just
# greyed out: one optimizer's knobs would otherwise crowd every other optimizer's form.
# dependent -> (controller, values for which the field is shown). Kept in step with what
# core/config/optimizers.py passes to each optimizer and NetworkType's own properties.
_D_ADAPTING = (OptimizerType.PRODIGY, OptimizerType.DADAPT_ADAM)
SHOWN_WHEN: dict[str, tuple[str, tuple[Any, ...]]] = {
    "optimizer.betas": ("optimizer.type", tuple(t for t in OptimizerType if t is not OptimizerType.ADAFACTOR)),
    "optimizer.eps": ("optimizer.type", tuple(t for t in OptimizerType
                                              if t not in (OptimizerType.LION, OptimizerType.ADAFACTOR))),
    "optimizer.d_coef": ("optimizer.type", (OptimizerType.PRODIGY,)),  # DAdaptAdam has none
    "optimizer.safeguard_warmup": ("optimizer.type", (OptimizerType.PRODIGY,)),
    "optimizer.growth_rate": ("optimizer.type", _D_ADAPTING),
    "optimizer.d0": ("optimizer.type", _D_ADAPTING),
    "optimizer.use_bias_correction": ("optimizer.type", _D_ADAPTING),
    "optimizer.decouple": ("optimizer.type", _D_ADAPTING),
    **{path: ENABLED_WHEN[path] for path in ENABLED_WHEN if ENABLED_WHEN[path][0] == "network.type"},
}

MARK_COLORS = {ERROR: theme.ERROR, WARNING: theme.WARNING}


def form_specs(cls: type) -> list[ParamSpec]:
    """The fields a flat form shows: lists of records (image folders) have their own editor."""
    return [s for s in param_specs(cls) if typing.get_origin(s.type) is not list]


def spec_at(path: str) -> ParamSpec | None:
    """The schema field a dotted path names (subset paths included), or None."""
    group, _, rest = path.partition(".")
    subset = re.match(r"subsets\[(\d+)\]\.(\w+)$", rest)
    if group == "dataset" and subset:
        return spec_for(SubsetParams, subset.group(2))
    cls = GROUPS.get(group)
    return spec_for(cls, re.split(r"[.\[]", rest)[0]) if cls else None


def field_title(path: str) -> str:
    """How a person reads a path: "Optimizer › Learning rate", "Dataset › Image folder 2 › Repeats"."""
    group, _, rest = path.partition(".")
    parts = [GROUP_TITLES.get(group, group)]
    subset = re.match(r"subsets\[(\d+)\]", rest)
    if group == "dataset" and subset:
        parts.append(f"Image folder {int(subset.group(1)) + 1}")
    spec = spec_at(path)
    if spec is not None and not (subset and spec.name == "subsets"):
        parts.append(spec.info.label)
    elif rest and not subset:
        parts.append(rest)
    return " › ".join(parts)


def describe_problem(problem: Problem) -> str:
    return f"{field_title(problem.path)}: {problem.message}" if problem.path else problem.message


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else format_float(value)


def tooltip(spec: ParamSpec, path: str, note: str = "", problems: list[tuple[str, str]] = ()) -> str:
    """Help, unit, range and path as rich text (which Qt wraps), then any problems in colour."""
    info = spec.info
    lines = [f"<b>{html.escape(info.label)}</b>", html.escape(info.help, quote=False)]
    if info.minimum is not None or info.maximum is not None:
        low = "" if info.minimum is None else _number(info.minimum)
        high = "" if info.maximum is None else _number(info.maximum)
        bounds = f"{low} to {high}" if low and high else (f"at least {low}" if low else f"at most {high}")
        lines.append(f"Range: {bounds}{' ' + info.unit if info.unit else ''}")
    elif info.unit:
        lines.append(f"Unit: {info.unit}")
    if note:
        lines.append(f"<i>{html.escape(note)}</i>")
    lines.append(f"<tt>{html.escape(path)}</tt>")
    for color, message in problems:
        lines.append(f"<span style='color:{color}'>{html.escape(message, quote=False)}</span>")
    return "<p style='white-space:pre-wrap'>" + "<br>".join(lines) + "</p>"


@dataclass
class FieldRow:
    path: str
    spec: ParamSpec
    label: QLabel
    editor: FieldEditor
    note: str = ""  # why the field is disabled, when it is


class FormBinding(QObject):
    """Keeps editors and ``project.config`` in step and shows problems on the fields."""

    edit_problems_changed = Signal()  # an edit was refused, or a refused edit was fixed

    def __init__(self, project: Project, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.project = project
        self.rows: dict[str, FieldRow] = {}
        self._edit_errors: dict[str, str] = {}  # text the person typed that the field refused
        self._problems: dict[str, list[Problem]] = {}
        self._line_height = 0
        project.loaded.connect(self._on_project_loaded)
        project.changed.connect(self._on_project_changed)

    # ---------------------------------------------------------------- building
    def add_field(self, spec: ParamSpec, path: str, parent: QWidget | None = None) -> FieldRow:
        editor = make_editor(spec, path, parent)
        label = QLabel(spec.info.label, parent)
        label.setBuddy(editor)
        # As tall as one line of inputs and centred on it, not on the message line below or
        # on the whole height of a prompt box.
        if not self._line_height:
            self._line_height = QLineEdit().sizeHint().height() + 2 * editor.inputs.contentsMargins().top() + 2
        label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        label.setFixedHeight(min(editor.frame.sizeHint().height(), self._line_height))
        row = FieldRow(path, spec, label, editor)
        self.rows[path] = row
        editor.show_value(self.project.value(path))
        editor.edited.connect(lambda p=path: self._on_editor_edited(p))
        self._update_row(row)
        return row

    def row_for(self, path: str) -> FieldRow | None:
        """The row that shows ``path`` or the value it is part of (resolution[0], extra_args.x)."""
        while path:
            if path in self.rows:
                return self.rows[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return None

    # ---------------------------------------------------------------- project -> editors
    def refresh(self, path: str | None = None) -> None:
        """Show the config's value (of one field, or all); forget refused text there."""
        paths = list(self.rows) if path is None else [path]
        for p in paths:
            row = self.rows.get(p)
            if row is None:
                continue
            value = self.project.value(p)
            if self._edit_errors.pop(p, None) is not None or not self._shows(row, value):
                row.editor.show_value(value)
            self._update_row(row)
        self._update_dependents()

    def _shows(self, row: FieldRow, value: Any) -> bool:
        # An editor already showing the value is left alone: rewriting it would move the
        # cursor of a prompt box being typed in, or reformat "1e-4" the person wrote.
        try:
            return row.editor.value() == value
        except FieldError:
            return False

    def _on_project_loaded(self) -> None:
        had_errors = bool(self._edit_errors)
        self._edit_errors.clear()
        for path, row in self.rows.items():
            row.editor.show_value(self.project.value(path))  # a new configuration: every field
            self._update_row(row)
        self._update_dependents()
        if had_errors:
            self.edit_problems_changed.emit()

    def _on_project_changed(self, path: str) -> None:
        path = path.strip()
        had_error = path in self._edit_errors
        self.refresh(path)
        if had_error:
            self.edit_problems_changed.emit()

    # ---------------------------------------------------------------- editors -> project
    def _on_editor_edited(self, path: str) -> None:
        row = self.rows[path]
        try:
            self.project.set_value(path, row.editor.value())
        except FieldError as err:
            self._edit_errors[path] = err.message
        else:
            if self._edit_errors.pop(path, None) is None:
                self._update_row(row)
                return
        self._update_row(row)
        self.edit_problems_changed.emit()

    def edit_problems(self) -> list[Problem]:
        """Refused edits, as errors: the field shows text the config does not hold."""
        return [Problem(path, f"{message} (not applied)") for path, message in self._edit_errors.items()]

    # ---------------------------------------------------------------- marks
    def show_problems(self, problems: list[Problem]) -> None:
        """Mark each field named by a problem; the rest are cleared."""
        self._problems = {}
        for problem in problems:
            row = self.row_for(problem.path)
            if row is not None:
                self._problems.setdefault(row.path, []).append(problem)
        for row in self.rows.values():
            self._update_row(row)

    def in_context(self, path: str) -> bool:
        """Whether the field means something with the other fields as they are (SHOWN_WHEN)."""
        controller, values = SHOWN_WHEN.get(path, ("", ()))
        return not controller or self.project.value(controller) in values

    def has_problem(self, path: str) -> bool:
        return path in self._edit_errors or bool(self._problems.get(path))

    def has_error(self, path: str) -> bool:
        return path in self._edit_errors or any(p.severity == ERROR for p in self._problems.get(path, []))

    def _update_row(self, row: FieldRow) -> None:
        marks: list[tuple[str, str]] = []
        if row.path in self._edit_errors:
            marks.append((theme.ERROR, self._edit_errors[row.path]))
        for problem in sorted(self._problems.get(row.path, []), key=lambda p: p.severity != ERROR):
            marks.append((MARK_COLORS.get(problem.severity, theme.WARNING), problem.message))
        color = marks[0][0] if marks else None
        row.editor.set_mark(color, "\n".join(message for _, message in marks))
        row.label.setStyleSheet(f"color: {color}; font-weight: bold;" if color else "")
        text = tooltip(row.spec, row.path, row.note, marks)
        row.editor.setToolTip(text)
        row.label.setToolTip(text)

    def _update_dependents(self) -> None:
        for path, (controller, values) in ENABLED_WHEN.items():
            row = self.rows.get(path)
            if row is None:
                continue
            used = self.project.value(controller) in values
            control = spec_at(controller)
            shown = " or ".join(str(getattr(v, "value", v)).lower() for v in values)
            note = "" if used else f"Not used: only when {control.info.label if control else controller} is {shown}"
            row.editor.setEnabled(used)
            row.label.setEnabled(used)
            if note != row.note:
                row.note = note
                self._update_row(row)
