"""Presets: sparse TOML overlays on the schema's defaults.

A preset holds only what differs from the defaults, carries ``schema_version``, is
upgraded by the functions in ``MIGRATIONS`` when older, is written atomically, and is
refused as a whole, with every problem named, when any key is unknown or any value
does not fit. Nothing is ever dropped silently.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import tomli_w

from core.system.atomic import write_text_atomic
from core.config.schema import GROUPS, SubsetParams, TrainConfig
from core.config.params import FieldError, PathKind, coerce_value, param_specs, range_problem, spec_for
from core.system.resources import is_builtin, resource_path

SCHEMA_VERSION = 1

# MIGRATIONS[n] turns a preset dict of schema version n into version n + 1. It receives
# and returns the whole document (with its schema_version key already removed).
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}

PRESET_SUFFIX = ".toml"
# No preset or Kohya config nests deeper than a list inside [[dataset.subsets]] (4 levels);
# a document nested far deeper is not one, and is refused before anything walks it.
MAX_NESTING = 16


class PresetError(ValueError):
    """A preset that cannot be used, with every problem as a (field path, message) pair."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: the preset cannot be used:"]
        lines += [f"  {path}: {message}" if path else f"  {message}" for path, message in problems]
        super().__init__("\n".join(lines))


@dataclass
class LoadedPreset:
    config: TrainConfig
    path: Path | None
    description: str = ""


# ---------------------------------------------------------------- writing


def _plain(value: Any) -> Any:
    """A schema value as TOML can hold it."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _group_to_dict(obj: Any, sparse: bool, always: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in param_specs(type(obj)):
        value = getattr(obj, spec.name)
        if value is None:
            continue  # TOML has no null: an absent key means "unset"
        if spec.name == "subsets":
            subsets = [_group_to_dict(s, sparse, always=("image_dir",)) for s in value]
            if subsets or not sparse:
                out["subsets"] = subsets
            continue
        if sparse and value == spec.default and spec.name not in always:
            continue
        out[spec.name] = _plain(value)
    return out


def config_to_dict(config: TrainConfig, *, sparse: bool = True, description: str = "") -> dict[str, Any]:
    """The preset document for ``config``: only non-default values when ``sparse``."""
    doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    if description:
        doc["description"] = description
    for group in GROUPS:
        values = _group_to_dict(getattr(config, group), sparse)
        if values or not sparse:
            doc[group] = values
    return doc


def dumps_preset(config: TrainConfig, *, sparse: bool = True, description: str = "") -> str:
    return tomli_w.dumps(config_to_dict(config, sparse=sparse, description=description))


def save_preset(config: TrainConfig, path: str | os.PathLike[str], *, description: str = "",
                sparse: bool = True) -> None:
    write_text_atomic(path, dumps_preset(config, sparse=sparse, description=description))


# ---------------------------------------------------------------- reading


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def resolve_path_value(value: str, base_dir: Path | None) -> str:
    """A path as stored in memory: ``builtin:`` kept, ``~`` expanded, relative made absolute."""
    if not value or is_builtin(value):
        return value
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return str(path)


def _fill(obj: Any, table: dict[str, Any], prefix: str, base_dir: Path | None,
          problems: list[tuple[str, str]]) -> None:
    cls = type(obj)
    names = [s.name for s in param_specs(cls)]
    for key, raw in table.items():
        path = f"{prefix}.{key}"
        spec = spec_for(cls, key)
        if spec is None:
            problems.append((path, "unknown key" + _suggest(key, names)))
            continue
        if key == "subsets":
            _fill_subsets(obj, raw, path, base_dir, problems)
            continue
        try:
            value = coerce_value(raw, spec.type, path)
        except FieldError as err:
            problems.append((err.path, err.message))
            continue
        message = range_problem(value, spec.info)
        if message:
            problems.append((path, message))
            continue
        if spec.info.path is not PathKind.NONE:
            value = resolve_path_value(value, base_dir)
        setattr(obj, key, value)


def _fill_subsets(obj: Any, raw: Any, path: str, base_dir: Path | None,
                  problems: list[tuple[str, str]]) -> None:
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        problems.append((path, "expected a list of tables ([[dataset.subsets]] sections)"))
        return
    subsets = []
    for index, table in enumerate(raw):
        subset = SubsetParams()
        _fill(subset, table, f"{path}[{index}]", base_dir, problems)
        subsets.append(subset)
    obj.subsets = subsets


def _migrate(doc: dict[str, Any], source: str) -> dict[str, Any]:
    version = doc.pop("schema_version", SCHEMA_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise PresetError(source, [("schema_version", f"expected a whole number from 1, got {version!r}")])
    if version > SCHEMA_VERSION:
        raise PresetError(source, [("schema_version",
                                    f"this preset was written by a newer LoRA Kiln (schema {version}; "
                                    f"this version reads up to {SCHEMA_VERSION}); update LoRA Kiln to open it")])
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise PresetError(source, [("schema_version", f"no upgrade from schema {version} is known")])
        doc = step(doc)
        version += 1
    return doc


def too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """True when tables and lists in ``value`` nest more than ``limit`` levels (no recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((child, depth + 1) for child in item)
    return False


def parser_trouble(error: Exception) -> str:
    """What a TOML or JSON parser's failure other than a syntax error means, for a person."""
    if isinstance(error, RecursionError):
        return f"its values are nested far too deeply (more than {MAX_NESTING} levels)"
    if "digits" in str(error):  # Python refuses to convert integers of thousands of digits
        return "it holds a number with thousands of digits"
    return str(error)


def config_from_dict(doc: dict[str, Any], *, source: str = "<preset>",
                     base_dir: Path | None = None) -> tuple[TrainConfig, str]:
    """Build a config from a preset document; returns (config, description)."""
    if not isinstance(doc, dict):
        raise PresetError(source, [("", "expected a table of sections")])
    if too_deep(doc):
        raise PresetError(source, [("", f"values are nested more than {MAX_NESTING} levels deep; "
                                        "a preset never is, so this is not one")])
    doc = _migrate(dict(doc), source)
    problems: list[tuple[str, str]] = []
    config = TrainConfig()
    description = doc.pop("description", "")
    if not isinstance(description, str):
        problems.append(("description", "expected text in quotes"))
        description = ""
    for key, table in doc.items():
        if key not in GROUPS:
            problems.append((key, "unknown section" + _suggest(key, list(GROUPS))))
        elif not isinstance(table, dict):
            problems.append((key, f"expected a [{key}] section"))
        else:
            _fill(getattr(config, key), table, key, base_dir, problems)
    if problems:
        raise PresetError(source, problems)
    return config, description


def loads_preset(text: str, *, source: str = "<preset>", base_dir: Path | None = None) -> LoadedPreset:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise PresetError(source, [("", f"not valid TOML: {err}")]) from None
    except (ValueError, RecursionError) as err:  # thousands of digits, or brackets nested thousands deep
        raise PresetError(source, [("", f"not a usable preset: {parser_trouble(err)}")]) from None
    config, description = config_from_dict(doc, source=source, base_dir=base_dir)
    return LoadedPreset(config, None, description)


# A full preset is a few kB; a config.toml with a long prompt list some more.
MAX_PRESET_BYTES = 4 * 1024 * 1024


def load_preset(path: str | os.PathLike[str]) -> LoadedPreset:
    file = Path(path)
    try:
        info = os.stat(file)
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block, a device never end
            raise PresetError(str(file), [("", "not a regular file, so it is not read as a preset")])
        if info.st_size > MAX_PRESET_BYTES:
            raise PresetError(str(file), [("", f"{info.st_size:,} bytes is far too large for a preset "
                                               f"(at most {MAX_PRESET_BYTES:,}); is it really one?")])
        raw = file.read_bytes()
    except OSError as err:
        raise PresetError(str(file), [("", f"cannot read the file: {err.strerror or err}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PresetError(str(file), [("", "the file is not UTF-8 text; is it really a preset?")]) from None
    loaded = loads_preset(text, source=str(file), base_dir=file.resolve().parent)
    loaded.path = file
    return loaded


def builtin_preset_names() -> list[str]:
    folder = resource_path("presets")
    return sorted(p.stem for p in folder.glob(f"*{PRESET_SUFFIX}"))


def find_preset(ref: str) -> Path:
    """A preset given on the command line: an existing file, or a built-in name like 'demo'."""
    candidate = Path(ref).expanduser()
    if candidate.is_file():
        return candidate
    builtin = resource_path("presets", ref + ("" if ref.endswith(PRESET_SUFFIX) else PRESET_SUFFIX))
    if builtin.is_file():
        return builtin
    names = ", ".join(builtin_preset_names())
    raise PresetError(ref, [("", f"no preset file '{ref}' and no built-in preset of that name "
                                 f"(built-in presets: {names})")])


def config_fields(config: TrainConfig) -> dict[str, Any]:
    """Every field as 'group.field' -> value (subsets as 'dataset.subsets[i].field')."""
    out: dict[str, Any] = {}
    for group in GROUPS:
        obj = getattr(config, group)
        for spec in param_specs(type(obj)):
            value = getattr(obj, spec.name)
            if spec.name == "subsets":
                for i, subset in enumerate(value):
                    for field_ in dataclasses.fields(subset):
                        out[f"{group}.subsets[{i}].{field_.name}"] = getattr(subset, field_.name)
            else:
                out[f"{group}.{spec.name}"] = value
    return out
