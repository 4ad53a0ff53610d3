"""Field metadata for the parameter schema, and the one place values are type-checked.

A parameter is a dataclass field declared with :func:`param`, which stores a
:class:`ParamInfo` in the field's metadata. Everything that shows, reads or writes
parameters (the GUI form, presets, ``--set``, validation, importers, LoRA metadata)
walks the dataclasses with :func:`iter_params` instead of listing fields again.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterator


class PathKind(enum.StrEnum):
    NONE = ""
    FILE = "file"
    DIR = "dir"
    FILE_OR_DIR = "file_or_dir"


@dataclass(frozen=True)
class ParamInfo:
    label: str
    help: str
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    path: PathKind = PathKind.NONE
    multiline: bool = False
    advanced: bool = False
    # The argument name in kohya_ss / sd-scripts, where one maps one-to-one.
    kohya: str | None = None
    step: float | None = None  # what the arrows of a number field add (default: 1, 64 for pixels)
    # The model families (ModelFamily values) the field means something for; empty: all.
    # A view shows the field only for these, and validation warns when it is set for another.
    families: tuple[str, ...] = ()

    def applies_to(self, family: str) -> bool:
        """True when the field means something for models of ``family`` (a ModelFamily value)."""
        return not self.families or str(family) in self.families


def param(default: Any = dataclasses.MISSING, *, label: str, help: str, unit: str = "",
          minimum: float | None = None, maximum: float | None = None,
          path: PathKind = PathKind.NONE, multiline: bool = False, advanced: bool = False,
          kohya: str | None = None, step: float | None = None, families: tuple[str, ...] = (),
          default_factory: Any = dataclasses.MISSING) -> Any:
    """Declare a schema field: its default and everything a view needs to show it."""
    info = ParamInfo(label=label, help=help, unit=unit, minimum=minimum, maximum=maximum,
                     path=path, multiline=multiline, advanced=advanced, kohya=kohya, step=step,
                     families=tuple(str(f) for f in families))
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata={"param": info})
    return field(default=default, metadata={"param": info})


@dataclass(frozen=True)
class ParamSpec:
    """A schema field resolved: its name, Python type and metadata."""

    name: str
    type: Any
    info: ParamInfo
    default: Any

    @property
    def choices(self) -> tuple[str, ...] | None:
        base = optional_inner(self.type)
        if isinstance(base, type) and issubclass(base, enum.Enum):
            return tuple(member.value for member in base)
        return None


class FieldError(ValueError):
    """A value that does not fit its field; ``path`` is dotted, e.g. ``network.dim``."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@lru_cache(maxsize=None)
def param_specs(cls: type) -> tuple[ParamSpec, ...]:
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        info = f.metadata.get("param")
        if info is None:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory()  # type: ignore[misc]
        specs.append(ParamSpec(f.name, hints[f.name], info, default))
    return tuple(specs)


def iter_params(cls: type) -> Iterator[ParamSpec]:
    return iter(param_specs(cls))


def spec_for(cls: type, name: str) -> ParamSpec | None:
    for spec in param_specs(cls):
        if spec.name == name:
            return spec
    return None


def optional_inner(tp: Any) -> Any:
    """``float | None`` -> ``float``; anything else unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and \
        type(None) in typing.get_args(tp)


def describe_type(tp: Any) -> str:
    tp = optional_inner(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "a whole number"
    if tp is float:
        return "a number"
    if tp is str:
        return "text in quotes"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        return f"a list of {len(args)} numbers, e.g. [{', '.join('512' for _ in args)}]"
    if typing.get_origin(tp) is dict:
        return "a table of names and values"
    return str(tp)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def coerce_value(value: Any, tp: Any, path: str) -> Any:
    """Return ``value`` as type ``tp`` or raise FieldError naming ``path``.

    Strict on purpose: a preset with a string where a number belongs is reported, not
    guessed at. The only conveniences are the ones users of Kohya configs expect: an
    integral float for a whole number, a single number for a square resolution, and
    enum choices matched without regard to letter case.
    """
    tp = optional_inner(tp)
    wrong = FieldError(path, f"expected {describe_type(tp)}, got {_show(value)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise wrong
    if tp is int:
        if isinstance(value, bool):
            raise wrong
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise wrong
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        if isinstance(value, float) and math.isnan(value):
            raise FieldError(path, "nan is not a valid value")
        return float(value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise wrong
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, str):
            for member in tp:
                if member.value == value or member.value.lower() == value.lower():
                    return member
        raise FieldError(path, f"{_show(value)} is not allowed; choose "
                         + ", ".join(repr(m.value) for m in tp))
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and len(set(args)) == 1:
            value = [value] * len(args)  # "resolution = 768" means 768 x 768, as in Kohya
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise wrong
        return tuple(coerce_value(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if typing.get_origin(tp) is dict:
        if not isinstance(value, dict):
            raise wrong
        out = {}
        for key, item in value.items():
            if not isinstance(item, (bool, int, float, str)):
                raise FieldError(f"{path}.{key}", "expected a single value (number, true/false or text)")
            out[str(key)] = item
        return out
    raise FieldError(path, f"unsupported field type {tp!r}")  # a schema bug, not user input


def range_problem(value: Any, info: ParamInfo) -> str | None:
    """The message for a value outside the field's range, or None when it fits."""
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if info.minimum is not None and v < info.minimum:
            return f"{_fmt(v)} is below the minimum of {_fmt(info.minimum)}{_unit(info)}"
        if info.maximum is not None and v > info.maximum:
            return f"{_fmt(v)} is above the maximum of {_fmt(info.maximum)}{_unit(info)}"
    return None


def _fmt(number: float) -> str:
    if isinstance(number, float) and number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return f"{number:g}"


def _unit(info: ParamInfo) -> str:
    return f" {info.unit}" if info.unit else ""
