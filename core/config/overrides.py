"""``--set group.field=value`` on the command line, checked by the same rules as presets."""

from __future__ import annotations

import re
import tomllib
from typing import Any

from core.config.schema import GROUPS, SubsetParams, TrainConfig
from core.config.params import (FieldError, PathKind, coerce_value, is_optional, optional_inner,
                         param_specs, range_problem, spec_for)
from core.config.presets import _suggest, resolve_path_value

_SUBSET = re.compile(r"^subsets(?:\[(\d+)\]|\.(\d+))$")


def _parse_literal(text: str) -> Any:
    """Read a value the way TOML would (numbers, true/false, [a, b], inf); else plain text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(config: TrainConfig, assignment: str) -> None:
    """Apply one ``group.field=value``; raises FieldError naming the field on any problem.

    Subset fields are addressed as ``dataset.subsets[0].num_repeats`` (or ``subsets.0``);
    index len(subsets) appends a new subset. ``none`` clears an optional field.
    """
    if "=" not in assignment:
        raise FieldError(assignment, "expected group.field=value")
    path, text = assignment.split("=", 1)
    path = path.strip()
    parts = path.split(".")
    # re-join "subsets.0" written with a dot so it reads as one part
    if len(parts) >= 3 and parts[1] == "subsets" and parts[2].isdigit():
        parts = [parts[0], f"subsets[{parts[2]}]", *parts[3:]]
    if parts[0] not in GROUPS:
        raise FieldError(path, "unknown group" + _suggest(parts[0], list(GROUPS)))
    target: Any = getattr(config, parts[0])
    if len(parts) == 3 and parts[0] == "dataset" and (match := _SUBSET.match(parts[1])):
        index = int(match.group(1) or match.group(2))
        if index == len(target.subsets):
            target.subsets.append(SubsetParams())
        elif index > len(target.subsets):
            raise FieldError(path, f"there are {len(target.subsets)} subsets; the next index is "
                                   f"{len(target.subsets)}")
        target = target.subsets[index]
        name = parts[2]
    elif len(parts) == 2:
        name = parts[1]
    else:
        raise FieldError(path, "expected group.field (for subsets: dataset.subsets[N].field)")
    spec = spec_for(type(target), name)
    if spec is None or name == "subsets":
        names = [s.name for s in param_specs(type(target)) if s.name != "subsets"]
        raise FieldError(path, "unknown field" + _suggest(name, names))
    if is_optional(spec.type) and text.strip().lower() in ("none", ""):
        setattr(target, name, None)
        return
    raw = _parse_literal(text)
    base = optional_inner(spec.type)
    if (base is str or (isinstance(base, type) and issubclass(base, str))) and not isinstance(raw, str):
        raw = text  # e.g. output_name=2024 or sampler=ddim stay text
    value = coerce_value(raw, spec.type, path)
    message = range_problem(value, spec.info)
    if message:
        raise FieldError(path, message)
    if spec.info.path is not PathKind.NONE:
        value = resolve_path_value(value, None)
    setattr(target, name, value)


def apply_overrides(config: TrainConfig, assignments: list[str]) -> list[tuple[str, str]]:
    """Apply every assignment; return all problems as (path, message) instead of stopping at one."""
    problems = []
    for assignment in assignments:
        try:
            apply_override(config, assignment)
        except FieldError as err:
            problems.append((err.path, err.message))
    return problems
