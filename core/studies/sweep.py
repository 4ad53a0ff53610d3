"""Parameter sweeps: one training run per value of one parameter, to compare them.

``--vary dataset.resolution=512,768,1024`` becomes a :class:`SweepSpec`; :func:`sweep_configs`
turns a base configuration into one checked configuration per value, each with its own LoRA
name; a sweep record (a small JSON file under ``<runs>/sweeps/``) remembers which run folders
belong to one sweep, so they can be reopened and compared together later.
"""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from core.system.atomic import write_text_atomic
from core.config.schema import GROUPS, SubsetParams, TrainConfig
from core.config.overrides import apply_override
from core.config.params import FieldError, param_specs, spec_for
from core.config.presets import _suggest
from core.system.words import count
from core.training.validation import errors, validate

SWEEPS_DIR = "sweeps"
RECORD_VERSION = 1
# These name the runs themselves: every run of a sweep already differs by its name, and all
# of them must share one output folder to be found (and compared) together.
_NOT_SWEEPABLE = ("output.output_name", "output.output_dir")
_SUBSET_PART = re.compile(r"^subsets(?:\[(\d+)\]|\.(\d+))?$")
_SUBSET_FIELD = re.compile(r"^dataset\.subsets\[(\d+)\]\.(\w+)$")  # a normalised subset field


class SweepError(ValueError):
    """A sweep that cannot run; ``problems`` holds one line per problem (also in the message)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or []
        super().__init__("\n".join([message] + [f"  {line}" for line in self.problems]))


@dataclass(frozen=True)
class SweepSpec:
    field: str  # normalised: "dataset.resolution", "dataset.subsets[0].num_repeats"
    values: tuple[str, ...]  # as the user typed them, read like --set values

    def label(self, value: str) -> str:
        return f"{self.field}={value}"


@dataclass(frozen=True)
class SweepRecord:
    field: str
    values: tuple[str, ...]
    run_dirs: tuple[Path, ...]  # the runs that got a folder, in sweep order
    created_at: float


# ---------------------------------------------------------------- parsing


def normalise_field(path: str) -> str:
    """``group.field`` checked against the schema and written one way; raises SweepError.

    Subset fields may be written ``dataset.subsets[0].x`` or ``dataset.subsets.0.x``; whether
    that subset exists is checked against the base configuration in :func:`sweep_configs`.
    """
    parts = path.strip().split(".")
    if len(parts) >= 3 and parts[1] == "subsets" and parts[2].isdigit():
        parts = [parts[0], f"subsets[{parts[2]}]", *parts[3:]]
    if not parts[0] or parts[0] not in GROUPS:
        raise SweepError(f"{path}: unknown group" + _suggest(parts[0], list(GROUPS)))
    if len(parts) == 3 and parts[0] == "dataset" and (match := _SUBSET_PART.match(parts[1])):
        index = match.group(1) or match.group(2)
        if index is None:
            raise SweepError(f"{path}: give the subset's index, e.g. dataset.subsets[0].{parts[2]}")
        cls, name, prefix = SubsetParams, parts[2], f"dataset.subsets[{int(index)}]"
    elif len(parts) == 2:
        cls, name, prefix = GROUPS[parts[0]], parts[1], parts[0]
    else:
        raise SweepError(f"{path}: expected group.field (for subsets: dataset.subsets[N].field)")
    if spec_for(cls, name) is None or name == "subsets":
        names = [s.name for s in param_specs(cls) if s.name != "subsets"]
        raise SweepError(f"{path}: unknown field" + _suggest(name, names))
    field = f"{prefix}.{name}"
    if field in _NOT_SWEEPABLE:
        raise SweepError(f"{field}: cannot be swept (each run of a sweep gets its own name, and all "
                         "of them share one output folder)")
    return field


def split_values(text: str) -> list[str]:
    """Split on commas that are not inside [brackets] or quotes, so ``[768,512],[512,768]``
    is two resolutions."""
    values, current, depth, quote = [], [], 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "[":
            depth += 1
        elif char == "]":
            depth = max(0, depth - 1)
        elif char == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    values.append("".join(current).strip())
    return values


def parse_vary(text: str) -> SweepSpec:
    """``group.field=v1,v2,...`` -> SweepSpec; raises SweepError naming the field."""
    if "=" not in text:
        raise SweepError(f"'{text}': expected group.field=value1,value2,... "
                         "(e.g. dataset.resolution=512,768)")
    path, raw = text.split("=", 1)
    field = normalise_field(path)
    values = split_values(raw)
    if any(not v for v in values):
        raise SweepError(f"{field}: empty value in '{raw}'; separate the values with single commas")
    if len(values) < 2:
        raise SweepError(f"{field}: a sweep needs at least two values, got {len(values)}")
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise SweepError(f"{field}: the value {value} is given twice")
        seen.add(value)
    return SweepSpec(field, tuple(values))


# ---------------------------------------------------------------- configurations


def value_suffix(spec: SweepSpec, value: str) -> str:
    """``resolution-768``, ``resolution-768x512``, ``growth_rate-inf``: safe in any file name."""
    name = spec.field.rsplit(".", 1)[-1]
    text = value.strip().strip("\"'")
    if text.startswith("[") and text.endswith("]"):
        text = "x".join(p.strip().strip("\"'") for p in text[1:-1].split(","))
    # a trailing dot is dropped: Windows cannot end a folder name with one
    text = re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_").rstrip(".")[:40] or "value"
    return f"{name}-{text}"


def _field_value(config: TrainConfig, field: str) -> object:
    if match := _SUBSET_FIELD.match(field):
        return getattr(config.dataset.subsets[int(match.group(1))], match.group(2))
    group, name = field.split(".")
    return getattr(getattr(config, group), name)


def sweep_configs(base: TrainConfig, spec: SweepSpec) -> list[tuple[str, TrainConfig]]:
    """One (label, config) per value: a deep copy of ``base`` with the value applied, named
    ``<output_name>_<field>-<value>``, and validated. Raises SweepError listing every problem
    (a value that does not fit, two values that mean the same, a configuration that would not
    start) for all values at once."""
    subset = _SUBSET_FIELD.match(spec.field)
    if subset and int(subset.group(1)) >= len(base.dataset.subsets):
        # apply_override would append a new, empty subset: never what a sweep means
        raise SweepError(f"the sweep of {spec.field} cannot run:",
                         [f"{spec.field}: the configuration has {count(len(base.dataset.subsets), 'subset')}; "
                          "sweep a subset that exists"])
    problems: list[str] = []
    built: list[tuple[str, str, TrainConfig]] = []
    for value in spec.values:
        config = copy.deepcopy(base)
        try:
            apply_override(config, f"{spec.field}={value}")
        except FieldError as err:
            problems.append(f"{value}: {err.path}: {err.message}")
            continue
        built.append((value, spec.label(value), config))
    seen: dict[str, str] = {}
    for value, _label, config in built:
        key = repr(_field_value(config, spec.field))
        if key in seen:
            problems.append(f"{value}: means the same as {seen[key]} (each run must differ)")
        seen.setdefault(key, value)
    if not problems:
        problems += _name_and_validate(base, spec, built)
    if problems:
        raise SweepError(f"the sweep of {spec.field} cannot run:", problems)
    return [(label, config) for _value, label, config in built]


def _name_and_validate(base: TrainConfig, spec: SweepSpec,
                       built: list[tuple[str, str, TrainConfig]]) -> list[str]:
    used: set[str] = set()
    per_value: list[tuple[str, list[str]]] = []
    for index, (value, _label, config) in enumerate(built):
        name = f"{base.output.output_name}_{value_suffix(spec, value)}"
        if name in used:  # two values that differ only in characters a file name cannot hold
            name = f"{name}-{index + 1}"
        used.add(name)
        config.output.output_name = name
        per_value.append((value, [str(p) for p in errors(validate(config))]))
    # A problem of the base configuration shows in every run: say it once.
    shared = set.intersection(*(set(found) for _v, found in per_value)) if per_value else set()
    lines = [f"every value: {line}" for line in per_value[0][1] if line in shared] if per_value else []
    for value, found in per_value:
        lines += [f"{value}: {line}" for line in found if line not in shared]
    return lines


# ---------------------------------------------------------------- records


def _stem(field: str, when: float) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    return f"{stamp}-{re.sub(r'[^A-Za-z0-9._-]+', '_', field).strip('_')}"


def write_sweep_record(root: Path, spec: SweepSpec, run_dirs: list[Path], when: float | None = None) -> Path:
    """Write ``<root>/sweeps/<stamp>-<field>.json`` (a new name if that exists); returns its path.
    The export of the sweep's comparison goes beside it, in the folder of the same stem."""
    created = time.time() if when is None else when
    folder = Path(root) / SWEEPS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stem = _stem(spec.field, created)
    path = folder / f"{stem}.json"
    counter = 2
    while path.exists() or path.with_suffix("").exists():
        path = folder / f"{stem}-{counter}.json"
        counter += 1
    document = {"version": RECORD_VERSION, "field": spec.field, "values": list(spec.values),
                "run_dirs": [str(Path(p).resolve()) for p in run_dirs], "created_at": created}
    write_text_atomic(path, json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    return path


def read_sweep_record(path: Path) -> SweepRecord:
    """Read a sweep record; raises SweepError naming the file when it cannot be used."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise SweepError(f"{path}: cannot read the sweep record: {err.strerror or err}") from None
    except ValueError as err:
        raise SweepError(f"{path}: the sweep record is not valid JSON ({err})") from None
    if not isinstance(document, dict):
        raise SweepError(f"{path}: not a sweep record (expected a JSON object)")
    version = document.get("version")
    if isinstance(version, int) and version > RECORD_VERSION:
        raise SweepError(f"{path}: written by a newer LoRA Kiln (record version {version}); update to read it")
    field, values, run_dirs = document.get("field"), document.get("values"), document.get("run_dirs")
    created = document.get("created_at", 0.0)
    if (not isinstance(field, str) or not isinstance(values, list) or not isinstance(run_dirs, list)
            or not all(isinstance(v, str) for v in values + run_dirs)
            or not isinstance(created, (int, float))):
        raise SweepError(f"{path}: not a sweep record (field, values, run_dirs or created_at missing "
                         "or of the wrong kind)")
    return SweepRecord(field, tuple(values), tuple(Path(p) for p in run_dirs), float(created))
