"""One editor widget per kind of schema field, chosen from the field's type and metadata.

Every editor shows a value with :meth:`FieldEditor.show_value` (never announcing it as an
edit, so loading a preset cannot echo back into the project), reads it with
:meth:`FieldEditor.value` (raising FieldError on text it cannot read), and emits
``edited`` when the person commits a change.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEvent, QObject, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import (QAbstractScrollArea, QAbstractSpinBox, QApplication, QCheckBox,
                               QComboBox, QDoubleSpinBox, QFileDialog, QFrame, QHBoxLayout, QLabel,
                               QLineEdit, QMenu, QPlainTextEdit, QSizePolicy, QSpinBox, QToolButton,
                               QWidget)

from core.config.params import FieldError, ParamSpec, PathKind, is_optional, optional_inner
from gui.dialog_folders import remember_folder, start_folder
from gui.form_values import VIEW_HINTS, ViewHint, format_float, format_pairs, parse_float, parse_pairs

_INT32 = 2**31 - 1
_NUMBER_WIDTH = 130


# ---------------------------------------------------------------- editors
class _WheelGuard(QObject):
    """Scrolling the form must not change the number or choice under the mouse pointer:
    an unfocused input hands the wheel to the scroll area around it, so the page scrolls."""

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() != QEvent.Type.Wheel or not isinstance(watched, QWidget) or watched.hasFocus():
            return False
        area = watched.parentWidget()
        while area is not None and not isinstance(area, QAbstractScrollArea):
            area = area.parentWidget()
        if area is not None:  # sent straight there: Qt does not pass a re-sent wheel event upwards
            QApplication.sendEvent(area.viewport(), event)
        return True


_WHEEL_GUARD = _WheelGuard()


def _guard_wheel(widget: QWidget) -> QWidget:
    widget.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
    widget.installEventFilter(_WHEEL_GUARD)
    return widget


class MarkFrame(QFrame):
    """Holds a field's inputs and draws a coloured border round them when marked. Painted
    rather than styled: a style sheet here would stop disabled inputs greying out."""

    def __init__(self) -> None:
        super().__init__()
        self.color: str | None = None

    def set_color(self, color: str | None) -> None:
        if color != self.color:
            self.color = color
            self.update()

    def paintEvent(self, event: QPaintEvent) -> None:
        super().paintEvent(event)
        if self.color:
            painter = QPainter(self)
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            painter.setPen(QPen(QColor(self.color), 1.5))
            painter.drawRoundedRect(QRectF(self.rect()).adjusted(0.75, 0.75, -0.75, -0.75), 3, 3)


class MessageLabel(QLabel):
    """A field's problem on one line beside its inputs, cut with "…" where the row is too
    narrow (the whole text is its tooltip). One line, never wrapped: a message that grew
    the row would move every field below it under the pointer."""

    def __init__(self) -> None:
        super().__init__()
        self.color: str | None = None
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)

    def setText(self, text: str) -> None:  # noqa: N802 - Qt's name
        super().setText(text.replace("\n", "; "))
        self.setToolTip(text)

    def minimumSizeHint(self) -> QSize:
        return QSize(0, super().minimumSizeHint().height())

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setPen(QColor(self.color) if self.color else self.palette().color(self.foregroundRole()))
        shown = self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight, self.width())
        painter.drawText(self.rect(), int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), shown)


class FieldEditor(QWidget):
    """Inputs for one field inside a frame that can be marked, and a message line beside them."""
    # Every editor below defines value() (the value it holds, as the field's type) and
    # _show(value) (put a value into its widgets; show_value wraps it so that ``edited``
    # is not emitted). A Qt widget cannot also use ABCMeta, so the contract is stated here.

    edited = Signal()
    wide = False  # text-like editors take the row's width; numbers stay compact

    def __init__(self, spec: ParamSpec, path: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.spec, self.path = spec, path
        self.hint = VIEW_HINTS.get(path, ViewHint())
        self.setObjectName(path)  # tests and screenshots find fields by dotted path
        self._showing = False
        self.frame = MarkFrame()
        self.inputs = QHBoxLayout(self.frame)
        self.inputs.setContentsMargins(2, 2, 2, 2)
        self.inputs.setSpacing(4)
        # The message's place is kept while it is hidden, so the inputs never move or resize.
        self.message = MessageLabel()
        policy = self.message.sizePolicy()
        policy.setRetainSizeWhenHidden(True)
        self.message.setSizePolicy(policy)
        self.message.hide()
        line = QHBoxLayout(self)
        line.setContentsMargins(0, 0, 0, 0)
        line.setSpacing(8)
        line.addWidget(self.frame, 2 if self.wide else 0)
        line.addWidget(self.message, 1, Qt.AlignmentFlag.AlignVCenter)
        self.set_mark(None, "")

    def show_value(self, value: Any) -> None:
        """Display ``value`` without emitting ``edited`` (the guard against feedback loops)."""
        self._showing = True
        try:
            self._show(value)
        finally:
            self._showing = False

    def focus_input(self) -> None:
        self.inputs.itemAt(0).widget().setFocus(Qt.FocusReason.OtherFocusReason)

    def set_mark(self, color: str | None, message: str) -> None:
        self.frame.set_color(color)
        self.message.setText(message)
        self.message.color = color
        self.message.setVisible(bool(message))

    def _add(self, widget: QWidget) -> QWidget:
        self.inputs.addWidget(widget)
        return widget

    def _add_unit(self) -> None:
        if self.spec.info.unit:
            self.inputs.addWidget(QLabel(self.spec.info.unit))

    def _commit(self, *_: Any) -> None:
        if not self._showing:
            self.edited.emit()


def _int_box(spec: ParamSpec, suffix: bool = True) -> QAbstractSpinBox:
    info = spec.info
    low = -_INT32 if info.minimum is None else info.minimum
    high = _INT32 if info.maximum is None else info.maximum
    if -_INT32 <= low and high <= _INT32:
        box: QAbstractSpinBox = QSpinBox()
        box.setRange(int(low), int(high))
    else:  # QSpinBox is 32-bit, yet seeds go to 2**32-1; a double holds integers exactly to 2**53
        box = QDoubleSpinBox()
        box.setDecimals(0)
        box.setRange(float(low), float(high))
    box.setKeyboardTracking(False)  # commit the typed number once, not each digit on the way
    step = info.step if info.step is not None else 64 if info.unit == "px" else 1
    box.setSingleStep(int(step))  # type: ignore[attr-defined]
    if suffix and info.unit:
        box.setSuffix(f" {info.unit}")  # type: ignore[attr-defined]
    box.setMinimumWidth(_NUMBER_WIDTH)
    return _guard_wheel(box)  # type: ignore[return-value]


def _number_edit(placeholder: str = "") -> QLineEdit:
    edit = QLineEdit()
    edit.setPlaceholderText(placeholder)
    edit.setMinimumWidth(_NUMBER_WIDTH if not placeholder else _NUMBER_WIDTH + 40)
    edit.setMaximumWidth(_NUMBER_WIDTH + 80)
    return edit


class BoolEditor(FieldEditor):
    def __init__(self, spec: ParamSpec, path: str, parent: QWidget | None = None) -> None:
        super().__init__(spec, path, parent)
        self.box = self._add(QCheckBox())
        self.box.toggled.connect(self._commit)

    def value(self) -> bool:
        return self.box.isChecked()

    def _show(self, value: Any) -> None:
        self.box.setChecked(bool(value))


class IntEditor(FieldEditor):
    def __init__(self, spec: ParamSpec, path: str, parent: QWidget | None = None) -> None:
        super().__init__(spec, path, parent)
        self.box = self._add(_int_box(spec))
        self.box.valueChanged.connect(self._commit)

    def value(self) -> int:
        return int(self.box.value())

    def _show(self, value: Any) -> None:
        self.box.setValue(value)


class FloatEditor(FieldEditor):
    """A line edit, not a spin box: 1e-4, 0.00005 and inf must show and read back exactly."""

    def __init__(self, spec: ParamSpec, path: str, parent: QWidget | None = None) -> None:
        super().__init__(spec, path, parent)
        self.optional = is_optional(spec.type)
        self.edit = self._add(_number_edit(self.hint.placeholder))
        self._add_unit()
        self.edit.editingFinished.connect(self._commit)

    def value(self) -> float | None:
        if not self.edit.text().strip():
            if self.optional:
                return None
            raise FieldError(self.path, "enter a number")
        return parse_float(self.edit.text(), self.path)

    def _show(self, value: Any) -> None:
        self.edit.setText("" if value is None else format_float(value))


class ChoiceEditor(FieldEditor):
    def __init__(self, spec: ParamSpec, path: str, parent: QWidget | None = None) -> None:
        super().__init__(spec, path, parent)
        self.combo = self._add(_guard_wheel(QComboBox()))
        self.combo.addItems(list(spec.choices or ()))
        self.combo.setMinimumWidth(_NUMBER_WIDTH)
        self.combo.currentIndexChanged.connect(self._commit)

    def value(self) -> str:
        return self.combo.currentText()

    def _show(self, value: Any) -> None:
        self.combo.setCurrentIndex(self.combo.findText(str(getattr(value, "value", value))))


class TextEditor(FieldEditor):
    wide = True

    def __init__(self, spec: ParamSpec, path: str, parent: QWidget | None = None) -> None:
        super().__init__(spec, path, parent)
        self.edit = self._add(QLineEdit())
        self.edit.setPlaceholderText(self.hint.placeholder)
        self.edit.editingFinished.connect(self._commit)

    def value(self) -> Any:
        return self.edit.text()

    def _show(self, value: Any) -> None:
        self.edit.setText(str(value))


class PathEditor(TextEditor):
    """A path line edit with a "…" button; a menu when files, folders or built-ins all fit."""

    def __init__(self, spec: ParamSpec, path: str, parent: QWidget | None = None) -> None:
        super().__init__(spec, path, parent)
        kind = spec.info.path
        self.button = self._add(QToolButton())
        self.button.setText("…")
        self.button.setToolTip(f"Choose the {spec.info.label.lower()}")
        choices = [("File…", "file")] if kind in (PathKind.FILE, PathKind.FILE_OR_DIR) else []
        choices += [("Folder…", "dir")] if kind in (PathKind.DIR, PathKind.FILE_OR_DIR) else []
        if len(choices) == 1 and not self.hint.builtins:
            self.button.clicked.connect(lambda _=False, k=choices[0][1]: self._browse(k))
            return
        menu = QMenu(self.button)
        for text, browse_kind in choices:
            menu.addAction(text).triggered.connect(lambda _=False, k=browse_kind: self._browse(k))
        if self.hint.builtins:
            menu.addSeparator()
            for text, value in self.hint.builtins:
                menu.addAction(text).triggered.connect(lambda _=False, v=value: self.choose(v))
        self.button.setMenu(menu)
        self.button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        # The "…" already says "more"; the arrow Fusion adds would squeeze it unreadable.
        self.button.setStyleSheet("QToolButton::menu-indicator { image: none; width: 0px; }")

    def choose(self, value: str) -> None:
        """Put ``value`` in the field and commit it, as picking it in a dialog does."""
        self.edit.setText(value)
        self._commit()

    def _browse(self, kind: str) -> None:
        title = f"Choose the {self.spec.info.label.lower()}"
        current = Path(self.edit.text()).expanduser() if self.edit.text() else None
        here = None
        if current is not None and current.exists():
            here = current if current.is_dir() else current.parent
        # An empty or shipped (builtin:) value must not open the app's own folder.
        start = str(start_folder("field", here))
        if kind == "dir":
            chosen = QFileDialog.getExistingDirectory(self, title, start)
        else:
            chosen, _ = QFileDialog.getOpenFileName(self, title, start, self.hint.file_filter)
        if chosen:
            remember_folder("field", chosen)
            self.choose(chosen)


class MultilineEditor(FieldEditor):
    wide = True

    def __init__(self, spec: ParamSpec, path: str, parent: QWidget | None = None) -> None:
        super().__init__(spec, path, parent)
        self.edit = self._add(QPlainTextEdit())
        self.edit.setTabChangesFocus(True)
        self.edit.setFixedHeight(self.edit.fontMetrics().lineSpacing() * 6 + 12)
        # Committed as typed, so a prompt is never lost by starting a run straight from the box.
        self.edit.textChanged.connect(self._commit)

    def value(self) -> str:
        return self.edit.toPlainText()

    def _show(self, value: Any) -> None:
        self.edit.setPlainText(str(value))


class TupleEditor(FieldEditor):
    """Fixed-length numbers side by side: resolution as W × H, betas as two rates."""

    def __init__(self, spec: ParamSpec, path: str, parent: QWidget | None = None) -> None:
        super().__init__(spec, path, parent)
        self.kinds = typing.get_args(optional_inner(spec.type))
        self.parts: list[QWidget] = []
        for i, kind in enumerate(self.kinds):
            if i:
                self._add(QLabel("×" if kind is int else ","))
            if kind is int:
                part = self._add(_int_box(spec, suffix=False))
                part.valueChanged.connect(self._commit)
            else:
                part = self._add(_number_edit())
                part.editingFinished.connect(self._commit)
            self.parts.append(part)
        self._add_unit()

    def value(self) -> tuple[Any, ...]:
        return tuple(int(p.value()) if k is int else parse_float(p.text(), f"{self.path}[{i}]")  # type: ignore[attr-defined]
                     for i, (p, k) in enumerate(zip(self.parts, self.kinds)))

    def _show(self, value: Any) -> None:
        for part, kind, item in zip(self.parts, self.kinds, value):
            if kind is int:
                part.setValue(item)  # type: ignore[attr-defined]
            else:
                part.setText(format_float(item))  # type: ignore[attr-defined]


class PairsEditor(TextEditor):
    """A table of keyword arguments as ``name=value name=value``."""

    def value(self) -> dict[str, Any]:
        return parse_pairs(self.edit.text(), self.path)

    def _show(self, value: Any) -> None:
        self.edit.setText(format_pairs(value))


def make_editor(spec: ParamSpec, path: str, parent: QWidget | None = None) -> FieldEditor:
    """The editor that fits the field's type; a type it does not know is a schema change to teach it."""
    tp = optional_inner(spec.type)
    origin = typing.get_origin(tp)
    if tp is bool:
        return BoolEditor(spec, path, parent)
    if tp is int:
        return IntEditor(spec, path, parent)
    if tp is float:
        return FloatEditor(spec, path, parent)
    if spec.choices:
        return ChoiceEditor(spec, path, parent)
    if tp is str:
        if spec.info.multiline:
            return MultilineEditor(spec, path, parent)
        if spec.info.path is not PathKind.NONE:
            return PathEditor(spec, path, parent)
        return TextEditor(spec, path, parent)
    if origin is tuple:
        return TupleEditor(spec, path, parent)
    if origin is dict:
        return PairsEditor(spec, path, parent)
    raise TypeError(f"no editor for {path}: {spec.type!r}")
