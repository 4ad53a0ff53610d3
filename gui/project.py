"""The open project: the configuration every tab edits, where it came from, and whether it
has unsaved changes. Tabs never hold their own copy: they read ``project.config`` and write
through :meth:`Project.set_value`, and listen to the signals."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from core.config.schema import TrainConfig
from core.config.overrides import apply_override
from core.config.params import FieldError, coerce_value, param_specs, range_problem
from core.config.presets import LoadedPreset, save_preset


# Fields that decide the model's family.
_MODEL_FIELDS = ("model.base_model", "model.family")


class Project(QObject):
    loaded = Signal()  # a whole new configuration: rebuild views from it
    changed = Signal(str)  # one field changed, by path ("network.dim", "dataset.subsets[0].num_repeats", "dataset.subsets")
    dirty_changed = Signal(bool)

    def __init__(self) -> None:
        super().__init__()
        self.config = TrainConfig()
        self.path: Path | None = None
        self.description = ""
        self.builtin = False  # opened from the shipped presets: "Save" asks for a new file
        self._dirty = False

    # ---------------------------------------------------------------- loading and saving
    def load(self, preset: LoadedPreset, *, builtin: bool = False) -> None:
        self.config = preset.config
        self.path = Path(preset.path) if preset.path else None
        self.description = preset.description
        self.builtin = builtin
        self._set_dirty(False)
        self.loaded.emit()

    def new(self) -> None:
        self.load(LoadedPreset(TrainConfig(), None, ""))

    def save(self, path: str | Path) -> None:
        if self.builtin:
            # The shipped preset's description tells what it is; the person's copy is theirs.
            self.description = f"Started from the built-in {self.name} preset."
        save_preset(self.config, path, description=self.description)
        self.path = Path(path)
        self.builtin = False
        self._set_dirty(False)

    @property
    def name(self) -> str:
        return self.path.stem if self.path else "untitled"

    @property
    def base_dir(self) -> Path | None:
        return self.path.resolve().parent if self.path else None

    # ---------------------------------------------------------------- editing
    def value(self, path: str) -> Any:
        target, name = self._resolve(path)
        return getattr(target, name)

    def set_value(self, path: str, value: Any) -> None:
        """Set one field, type-checked like a preset value; raises FieldError naming it."""
        target, name = self._resolve(path)
        spec = next((s for s in param_specs(type(target)) if s.name == name), None)
        if spec is None:
            raise FieldError(path, "unknown field")
        if value is not None:
            value = coerce_value(value, spec.type, path)
            problem = range_problem(value, spec.info)
            if problem:
                raise FieldError(path, problem)
        if getattr(target, name) == value:
            return
        family_before = self.model_family() if path in _MODEL_FIELDS else None
        setattr(target, name, value)
        self._set_dirty(True)
        self.changed.emit(path)
        if family_before is not None:
            self._follow_family(family_before)

    def model_family(self) -> Any:
        """The core.models.family.Family the project's model is of, or None when none fits."""
        from core.models.family import UnsupportedFamily, family_for

        try:
            return family_for(self.config.model.base_model, self.config.model.family)
        except UnsupportedFamily:
            return None

    def _follow_family(self, before: Any) -> None:
        """A model of another family: sizes still at the old family's defaults take the new
        family's (an SDXL model trains at 1024, not at SD 1.x's 512)."""
        from core.models.family import moved_defaults, resolution_defaults

        after = self.model_family()
        if before is None or after is None or after is before:
            return
        current = {path: self.value(path) for path in resolution_defaults(before)}
        for path, value in moved_defaults(current, before, after).items():
            self.set_value(path, value)

    def apply(self, assignment: str) -> None:
        """``group.field=value`` as the CLI's --set reads it (used by sweeps and tests)."""
        apply_override(self.config, assignment)
        self._set_dirty(True)
        self.changed.emit(assignment.split("=", 1)[0])

    def replace_subsets(self, subsets: list) -> None:
        self.config.dataset.subsets = list(subsets)
        self._set_dirty(True)
        self.changed.emit("dataset.subsets")

    def snapshot(self) -> TrainConfig:
        """A copy to hand to a training run, so later edits do not reach the running engine."""
        return copy.deepcopy(self.config)

    def mark_dirty(self) -> None:
        """For changes that did not come through set_value (an imported config)."""
        self._set_dirty(True)

    @property
    def dirty(self) -> bool:
        return self._dirty

    def _set_dirty(self, dirty: bool) -> None:
        if dirty != self._dirty:
            self._dirty = dirty
            self.dirty_changed.emit(dirty)

    def _resolve(self, path: str) -> tuple[Any, str]:
        parts = path.replace("]", "").replace("[", ".").split(".")
        target: Any = self.config
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else getattr(target, part)
        return target, parts[-1]
