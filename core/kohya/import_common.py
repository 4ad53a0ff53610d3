"""What every Kohya importer shares: the kinds of file, the result with its mapped,
unsupported and ignored lists, the import context the key mappers fill, and reading a
config file safely. The importer (core.kohya.import_config) and its parts
(import_special, import_misc, import_dataset) all build on this module.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any, NamedTuple

from core.kohya import import_keys as keys
from core.config.schema import GROUPS, DatasetParams, TrainConfig
from core.config.params import FieldError, ParamSpec, PathKind, coerce_value, param_specs, range_problem, spec_for
from core.config.presets import MAX_NESTING, parser_trouble, resolve_path_value, too_deep
from core.system.safe_read import FileRefused, MiB, read_regular_bytes

KOHYA_SS = "kohya_ss GUI JSON"
CONFIG = "sd-scripts config TOML"
DATASET = "sd-scripts dataset config TOML"

# Keys that any kohya_ss LoRA JSON has; a JSON object with none of them is something else.
_KOHYA_SS_MARKERS = ("LoRA_type", "train_data_dir", "pretrained_model_name_or_path", "network_dim",
                     "output_name", "optimizer", "learning_rate")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# The largest kohya_ss JSON or sd-scripts TOML is a few tens of KiB; a file far larger is
# something else, and reading it whole could exhaust memory (/dev/zero never ends).
MAX_CONFIG_BYTES = 4 * MiB


class KohyaImportError(ValueError):
    """A file that cannot be imported at all; the message names the file."""

    def __init__(self, file: str | Path, message: str) -> None:
        super().__init__(f"{file}: {message}")
        self.file = str(file)
        self.message = message


class Mapped(NamedTuple):
    key: str  # as written in the file; "optimizer_args.betas" for one item of a list-like value
    field: str  # the field path(s) it set, e.g. "network.dim"
    value: Any  # as written in the file


class Unsupported(NamedTuple):
    key: str
    value: Any
    reason: str


@dataclass
class ImportResult:
    config: TrainConfig
    mapped: list[Mapped] = field(default_factory=list)
    unsupported: list[Unsupported] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ignored: list[Unsupported] = field(default_factory=list)  # empty, off or overridden values
    sources: list[tuple[str, str]] = field(default_factory=list)  # (file, what it was read as)

    def summary(self) -> str:
        """The report's last line, the same in the CLI and the GUI."""
        return (f"{len(self.mapped)} mapped, {len(self.ignored)} ignored (no effect), "
                f"{len(self.unsupported)} not supported")


def _direct_fields() -> dict[str, tuple[str, ParamSpec]]:
    """kohya name -> (group, field) for every one-to-one field outside the dataset section.

    The dataset's own options (resolution, buckets, subsets) resolve through sd-scripts'
    levels in core.kohya.import_dataset; keys.DATASET_ARGUMENT_FIELDS are ordinary arguments.
    """
    found: dict[str, tuple[str, ParamSpec]] = {}
    for group, cls in GROUPS.items():
        for spec in param_specs(cls):
            if spec.info.kohya and (cls is not DatasetParams or spec.name in keys.DATASET_ARGUMENT_FIELDS):
                found[spec.info.kohya] = (group, spec)
    return found


DIRECT = _direct_fields()


class ImportContext:
    """The config being built, the main file's arguments and the three report lists."""

    def __init__(self, kind: str | None, args: dict[str, Any], base_dir: Path, file: str) -> None:
        self.kind = kind
        self.base_dir = base_dir
        self.file = file
        self.result = ImportResult(TrainConfig())
        self.config = self.result.config
        self.args: dict[str, Any] = {}  # sd-scripts / schema names -> values
        self.shown: dict[str, str] = {}  # the same names -> the key as the file writes it
        self.done: set[str] = set()
        self.defaulted: set[str] = set()  # filled from SD_SCRIPTS_DEFAULTS, not in the file
        self.defaults_used: list[str] = []  # those of them that set a field
        self.doc_keys: dict[str, str] = {}  # dataset-config key -> the key as the file writes it
        # Current names first: when a file has both spellings, the current one is used and the
        # old one is reported as ignored (never silently overwritten by it, or it by the other).
        for key, value in sorted(args.items(), key=lambda item: item[0] in keys.KEY_ALIASES):
            name = keys.KEY_ALIASES.get(key, key)
            if name in self.args:
                self.ignored(key, value, f"{self.shown[name]} is also set, and is used")
                continue
            self.args[name], self.shown[name] = value, key

    # ------------------------------------------------------------ arguments
    def has(self, name: str) -> bool:
        return name in self.args and name not in self.done

    def value(self, name: str) -> Any:
        return self.args[name]

    def arg_mapped(self, name: str, field_path: str) -> None:
        if name in self.defaulted and name not in self.done:
            self.defaults_used.append(name)
        self._take(name, lambda key, value: self.mapped(key, field_path, value))

    def arg_unsupported(self, name: str, reason: str) -> None:
        self._take(name, lambda key, value: self.unsupported(key, value, reason))

    def arg_ignored(self, name: str, reason: str) -> None:
        self._take(name, lambda key, value: self.ignored(key, value, reason))

    def _take(self, name: str, report: Any) -> None:
        self.done.add(name)
        if name not in self.defaulted:  # a default stands in for an absent key: nothing to list
            report(self.shown[name], self.args[name])

    def arg_direct(self, name: str, obj: Any, field_name: str, path: str) -> bool:
        """Put argument ``name`` into ``obj.field_name``; report it either way. True if set."""
        raw = self.value(name)
        spec = spec_for(type(obj), field_name)
        if spec is None:  # a handler naming a field the schema lacks: a bug, not user input
            raise KeyError(f"{type(obj).__name__} has no field {field_name}")
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            self.arg_ignored(name, "empty: LoRA Kiln's default applies")
            return False
        error = self.set(obj, spec, raw, path)
        if error:
            self.arg_unsupported(name, error)
            return False
        self.arg_mapped(name, path)
        return True

    # ------------------------------------------------------------ report
    def mapped(self, key: str, field_path: str, value: Any) -> None:
        self.result.mapped.append(Mapped(key, field_path, value))

    def unsupported(self, key: str, value: Any, reason: str) -> None:
        self.result.unsupported.append(Unsupported(key, value, reason))

    def ignored(self, key: str, value: Any, reason: str) -> None:
        self.result.ignored.append(Unsupported(key, value, reason))

    def warn(self, message: str) -> None:
        self.result.warnings.append(message)

    # ------------------------------------------------------------ values
    def convert(self, raw: Any, spec: ParamSpec, path: str, base_dir: Path | None = None) -> Any:
        """``raw`` as the field's type, range-checked, paths resolved; raises FieldError."""
        try:
            value = coerce_value(keys.loosen(raw, spec.type), spec.type, path)
        except (TypeError, ValueError, OverflowError) as err:  # 1e400 as an integer overflows
            if isinstance(err, FieldError):
                raise
            shown = repr(raw) if len(repr(raw)) <= 60 else repr(raw)[:57] + "..."
            raise FieldError(path, f"{shown} does not fit ({err})") from None
        problem = range_problem(value, spec.info)
        if problem:
            raise FieldError(path, problem)
        if spec.info.path is not PathKind.NONE:
            value = self.resolve_path(value, base_dir or self.base_dir, path)
        return value

    def set(self, obj: Any, spec: ParamSpec, raw: Any, path: str, base_dir: Path | None = None) -> str | None:
        """Set the field; the problem as text instead of raising."""
        try:
            setattr(obj, spec.name, self.convert(raw, spec, path, base_dir))
        except FieldError as err:
            return err.message
        return None

    def resolve_path(self, value: str, base_dir: Path, path: str) -> str:
        # A Windows path read on Linux or macOS is kept as written rather than glued to the
        # file's folder: the config may come from another machine, so nothing here requires
        # a path to exist.
        windows = PureWindowsPath(value)
        if value and windows.drive and windows.root:
            return value
        if path == "model.base_model" and _HUB_ID.match(value) and not Path(value).suffix \
                and not os.path.exists(base_dir / value):  # os.path: False on a too-long name
            self.warn(f"{path}: '{value}' looks like a Hugging Face model name; LoRA Kiln works "
                      "offline, so download the model and choose its file or folder")
            return value
        return resolve_path_value(value, base_dir)


# ---------------------------------------------------------------- reading


def read_config_bytes(path: Path) -> bytes:
    """A config file's bytes: a regular file of at most MAX_CONFIG_BYTES, or FileRefused."""
    return read_regular_bytes(path, limit=MAX_CONFIG_BYTES)


def read_source(path: Path, raw: bytes | None = None, notes: list[str] | None = None) -> tuple[str, dict[str, Any]]:
    """(what the file is, its contents); raises KohyaImportError naming the file.

    ``raw`` is the file's bytes when the caller has read them already; a key a JSON file
    sets twice is warned about into ``notes``.
    """
    if raw is None:
        try:
            raw = read_config_bytes(path)
        except FileRefused as err:
            raise KohyaImportError(path, err.reason) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise KohyaImportError(path, "the file is not UTF-8 text; is it really a Kohya config?") from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text, object_pairs_hook=lambda pairs: _object(pairs, path, notes))
        except json.JSONDecodeError as err:
            raise KohyaImportError(path, f"not valid JSON: {err.msg} at line {err.lineno}, "
                                         f"column {err.colno}") from None
        except (ValueError, RecursionError) as err:  # a number of thousands of digits, deep nesting
            raise KohyaImportError(path, f"not a usable JSON file: {parser_trouble(err)}") from None
        _check_depth(path, data)
        if not isinstance(data, dict) or not any(key in data for key in _KOHYA_SS_MARKERS):
            raise KohyaImportError(path, "a JSON file, but not a kohya_ss LoRA config (it has none of "
                                         + ", ".join(_KOHYA_SS_MARKERS) + ")")
        return KOHYA_SS, data
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        # TOML forbids setting a key twice in one table; the parser only says "overwrite".
        twice = "; a key is set twice in one table: keep one of them" if "overwrite" in str(err).lower() else ""
        raise KohyaImportError(path, f"not valid TOML: {err}{twice}") from None
    except (ValueError, RecursionError) as err:
        raise KohyaImportError(path, f"not a usable TOML file: {parser_trouble(err)}") from None
    _check_depth(path, data)
    if "schema_version" in data:
        raise KohyaImportError(path, "this is a LoRA Kiln preset, not a Kohya config; open it directly")
    if "datasets" in data:
        datasets = data["datasets"]
        if not isinstance(datasets, list) or not all(isinstance(d, dict) for d in datasets):
            raise KohyaImportError(path, "'datasets' must be a list of tables ([[datasets]] sections)")
        return DATASET, data
    from core.kohya.import_easy import EASY, is_easy_config

    return (EASY if is_easy_config(data) else CONFIG), data


def _object(pairs: list[tuple[str, Any]], path: Path, notes: list[str] | None) -> dict[str, Any]:
    # JSON allows a key twice and json.loads keeps the last silently; kohya_ss reads it so too,
    # but a file that says two things about one option deserves a look.
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found and notes is not None:
            notes.append(f"{path.name}: '{key}' is set twice ({found[key]!r}, then {value!r}); the later "
                         "value is used, as kohya_ss reads it")
        found[key] = value
    return found


def _check_depth(path: Path, data: Any) -> None:
    # Refused here, naming the file, rather than crashing whatever walks the values later.
    if too_deep(data):
        raise KohyaImportError(path, f"its values are nested more than {MAX_NESTING} levels deep; "
                                     "no Kohya config is, so this is not one")


def flatten_config(data: dict[str, Any], file: str, warnings: list[str]) -> dict[str, Any]:
    """sd-scripts' reading of a config TOML: each section's keys become argument names."""
    flat: dict[str, Any] = {}
    for name, value in data.items():
        items = value.items() if isinstance(value, dict) else [(name, value)]
        for key, item in items:
            if key in flat:
                warnings.append(f"{file}: '{key}' is set twice; the later value is used, as in sd-scripts")
            flat[key] = item
    return flat
