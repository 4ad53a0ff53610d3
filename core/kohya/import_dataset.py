"""The dataset part of a Kohya import: image folders, caption options, resolution, buckets.

sd-scripts resolves every dataset and subset option through levels, the lowest first:
the training arguments (kohya_ss's JSON or the config TOML), [general], each [[datasets]]
and each [[datasets.subsets]]; a higher level overrides a lower one. Without a dataset
config, kohya_ss's training folder (train_data_dir) and regularisation folder
(reg_data_dir) are Kohya-layout folders that take the arguments' caption options.
Option names come from the schema's ``kohya=`` names of DatasetParams and SubsetParams.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.kohya import import_keys as keys
from core.config.schema import DatasetParams, SubsetParams, TrainingParams
from core.kohya.import_common import DATASET, ImportContext, read_config_bytes, read_source
from core.config.params import FieldError, ParamSpec, param_specs, spec_for
from core.system.safe_read import FileRefused


def _dataset_targets() -> dict[str, tuple[str, ParamSpec]]:
    targets = {s.info.kohya: ("dataset", s) for s in param_specs(DatasetParams)
               if s.info.kohya and s.name not in keys.DATASET_ARGUMENT_FIELDS}
    targets["batch_size"] = ("training", spec_for(TrainingParams, "batch_size"))
    return targets


DATASET_KEYS: dict[str, tuple[str, ParamSpec]] = _dataset_targets()
SUBSET_KEYS: dict[str, ParamSpec] = {s.info.kohya: s for s in param_specs(SubsetParams) if s.info.kohya}
# Only a dataset config can give these; sd-scripts has no arguments of these names.
_SUBSET_ONLY = frozenset({"image_dir", "num_repeats", "class_tokens", "is_reg"})
# The dataset config's batch_size is the argument train_batch_size.
_ARG_NAMES = {"batch_size": "train_batch_size"}
ARGUMENTS = (frozenset(_ARG_NAMES.get(name, name) for name in DATASET_KEYS)
             | (frozenset(SUBSET_KEYS) - _SUBSET_ONLY) | {"train_data_dir", "reg_data_dir"})


@dataclass(eq=False)
class _Level:
    name: str  # "arguments", "general", "datasets[0]", "datasets[0].subsets[1]"
    values: dict[str, Any]  # dataset-config option names -> values as written
    keys: dict[str, str]  # the same names -> the key as the report shows it
    base_dir: Path  # relative image folders resolve against the file's folder
    args: bool = False  # the main file's arguments: reported through ctx.arg_*
    silent: bool = False  # sd-scripts' default standing in for an absent key
    skipped: str = ""  # why the whole subset was left out
    used: dict[str, list[str]] = field(default_factory=dict)  # name -> field paths it set
    errors: dict[str, str] = field(default_factory=dict)
    beaten_by: dict[str, str] = field(default_factory=dict)  # name -> the key that overrode it


def assemble_dataset(ctx: ImportContext, doc: dict[str, Any] | None, doc_path: Path | None) -> None:
    """Fill config.dataset (and training.batch_size) and report every dataset key."""
    base = _Level("sd-scripts default", {"caption_extension": ".caption"}, {}, ctx.base_dir, silent=True) \
        if ctx.kind is None else None
    args = _arguments_level(ctx)
    below = [level for level in (base, args) if level is not None]
    levels = list(below)
    subsets: list[tuple[SubsetParams, list[_Level]]] = []
    if doc is None or doc_path is None:
        for name, is_reg in (("train_data_dir", False), ("reg_data_dir", True)):
            if not ctx.has(name):
                continue
            if keys.is_off(ctx.value(name)):
                ctx.arg_ignored(name, keys.OFF)
                continue
            subset = SubsetParams(kohya_layout=True, is_reg=is_reg)
            path = f"dataset.subsets[{len(subsets)}].image_dir"
            error = ctx.set(subset, SUBSET_KEYS["image_dir"], ctx.value(name), path)
            if error:
                ctx.arg_unsupported(name, error)
                continue
            ctx.arg_mapped(name, path)
            subsets.append((subset, below))
        dataset_levels, others = below, []
    else:
        for name in ("train_data_dir", "reg_data_dir"):
            if ctx.has(name):
                ctx.arg_ignored(name, keys.OFF if keys.is_off(ctx.value(name))
                                else "sd-scripts ignores it when a dataset config is given")
        folder = doc_path.resolve().parent
        both = set(DATASET_KEYS) | set(SUBSET_KEYS)
        general = _doc_level(ctx, "general", doc.get("general", {}), folder, both)
        levels.append(general)
        datasets: list[_Level] = []
        for i, table in enumerate(doc["datasets"]):
            level = _doc_level(ctx, f"datasets[{i}]", table, folder, both)
            datasets.append(level)
            levels.append(level)
            raw_subsets = table.get("subsets", [])
            if not isinstance(raw_subsets, list) or not all(isinstance(s, dict) for s in raw_subsets):
                ctx.unsupported(f"datasets[{i}].subsets", raw_subsets, "expected [[datasets.subsets]] tables")
                continue
            for j, sub_table in enumerate(raw_subsets):
                sub = _doc_level(ctx, f"datasets[{i}].subsets[{j}]", sub_table, folder, set(SUBSET_KEYS))
                levels.append(sub)
                stack = [*below, general, level, sub]
                if not any("image_dir" in lv.values for lv in stack):
                    sub.skipped = "this subset has no image_dir (fine-tuning subsets are not supported)"
                    continue
                subsets.append((SubsetParams(), stack))
        dataset_levels, others = [*below, general, *datasets[:1]], datasets[1:]
    config_subsets = []
    for index, (subset, stack) in enumerate(subsets):
        _fill_subset(ctx, subset, index, stack)
        config_subsets.append(subset)
    ctx.config.dataset.subsets = config_subsets
    _fill_dataset(ctx, dataset_levels, others)
    if base is not None and base.used:
        ctx.warn("caption_extension is not set: sd-scripts' default '.caption' is used")
    for level in levels:
        _report(ctx, level, no_subsets=not subsets)


def linked_dataset_config(ctx: ImportContext, given: tuple[Path, dict[str, Any]] | None
                           ) -> tuple[Path, dict[str, Any]] | None:
    """The dataset config the main file names in 'dataset_config', read when not given."""
    if not ctx.has("dataset_config"):
        return given
    value = ctx.value("dataset_config")
    if keys.is_off(value):
        ctx.arg_ignored("dataset_config", keys.OFF)
        return given
    if given is not None:
        ctx.arg_ignored("dataset_config", f"the dataset config given ({given[0].name}) is used instead")
        return given
    path = Path(ctx.resolve_path(str(value), ctx.base_dir, "dataset_config"))
    try:  # only a regular file of a config's size: never a device, a FIFO or a folder
        raw = read_config_bytes(path)
    except FileRefused as err:
        ctx.arg_unsupported("dataset_config", "file not found here: import it as a second file" if err.missing
                            else f"{path} {err.reason}")
        return None
    kind, data = read_source(path, raw)
    if kind != DATASET:
        ctx.arg_unsupported("dataset_config", f"{path.name} is not a dataset config (no [[datasets]])")
        return None
    ctx.arg_mapped("dataset_config", "dataset.subsets")
    ctx.result.sources.append((str(path), DATASET))
    return path, data


def _arguments_level(ctx: ImportContext) -> _Level:
    level = _Level("arguments", {}, {}, ctx.base_dir, args=True)
    for name in [*DATASET_KEYS, *SUBSET_KEYS]:
        arg = _ARG_NAMES.get(name, name)
        if name in _SUBSET_ONLY or not ctx.has(arg):
            continue
        raw = ctx.value(arg)
        if name == "caption_extension" and raw == "" and ctx.kind is not None:
            # kohya_ss leaves an empty extension out, so sd-scripts reads .caption files.
            ctx.warn("caption_extension is empty: kohya_ss then passes none and sd-scripts reads "
                     "'.caption' files; set it to '.txt' if your captions are .txt files")
            raw = ".caption"
        elif raw is None or (isinstance(raw, str) and not raw.strip()):
            ctx.arg_ignored(arg, "empty: LoRA Kiln's default applies")
            continue
        level.values[name], level.keys[name] = raw, ctx.shown[arg]
    return level


def _doc_level(ctx: ImportContext, name: str, table: Any, base_dir: Path, allowed: set[str]) -> _Level:
    level = _Level(name, {}, {}, base_dir)
    if not isinstance(table, dict):
        ctx.unsupported(name, table, "expected a table")
        return level
    for key, value in table.items():
        full = f"{name}.{key}"
        full = ctx.doc_keys.get(full, full)  # the key as a file of another layout writes it
        if key == "subsets" and name.startswith("datasets") and "subsets[" not in name:
            continue  # the caller reads them
        if key in allowed:
            level.values[key], level.keys[key] = value, full
        elif key in DATASET_KEYS:
            ctx.unsupported(full, value, "a dataset option: sd-scripts takes it only in [general] or [[datasets]]")
        else:
            unsupported, reason = keys.classify_other(key, value, {})
            (ctx.unsupported if unsupported else ctx.ignored)(full, value, reason)
    return level


def _winner(name: str, stack: list[_Level]) -> _Level | None:
    """The highest level that sets ``name``; the levels below it learn who overrode them."""
    found = [level for level in stack if name in level.values]
    if not found:
        return None
    top = found[-1]
    for level in found[:-1]:
        level.beaten_by[name] = top.keys.get(name, top.name)
    return top


def _fill_subset(ctx: ImportContext, subset: SubsetParams, index: int, stack: list[_Level]) -> None:
    for name, spec in SUBSET_KEYS.items():
        level = _winner(name, stack)
        if level is None:
            continue
        path = f"dataset.subsets[{index}].{spec.name}"
        try:
            setattr(subset, spec.name, ctx.convert(level.values[name], spec, path, level.base_dir))
        except FieldError as err:
            level.errors[name] = err.message
            continue
        level.used.setdefault(name, []).append(path)


def _fill_dataset(ctx: ImportContext, stack: list[_Level], others: list[_Level]) -> None:
    for name, (group, spec) in DATASET_KEYS.items():
        target = getattr(ctx.config, group)
        path = f"{group}.{spec.name}"
        level = _winner(name, stack)
        if level is not None:
            try:
                setattr(target, spec.name, ctx.convert(level.values[name], spec, path, level.base_dir))
                level.used[name] = [path]
            except FieldError as err:
                level.errors[name] = err.message
        chosen = getattr(target, spec.name)
        for other in others:  # LoRA Kiln trains one dataset: the first one's options hold
            if name not in other.values:
                continue
            try:
                same = ctx.convert(other.values[name], spec, path, other.base_dir) == chosen
            except FieldError as err:
                other.errors[name] = err.message
                continue
            if same:
                other.used[name] = [path]
            else:
                other.errors[name] = (f"LoRA Kiln trains one dataset at one {spec.info.label.lower()}: "
                                      f"the first dataset's {_shown_value(chosen)} is used")


def _shown_value(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _report(ctx: ImportContext, level: _Level, no_subsets: bool) -> None:
    if level.silent:
        return
    for name in level.values:
        if name in level.errors:
            kind, detail = "unsupported", level.errors[name]
        elif name in level.used:
            kind, detail = "mapped", ", ".join(level.used[name])
        elif level.skipped:
            kind, detail = "unsupported", level.skipped
        elif name in level.beaten_by:
            kind, detail = "ignored", f"overridden by {level.beaten_by[name]}"
        elif name in SUBSET_KEYS and no_subsets:
            kind, detail = "ignored", "no image folder to apply it to"
        else:
            kind, detail = "ignored", "not used"
        if level.args:
            arg = _ARG_NAMES.get(name, name)
            {"mapped": ctx.arg_mapped, "unsupported": ctx.arg_unsupported,
             "ignored": ctx.arg_ignored}[kind](arg, detail)
        else:
            report = {"mapped": ctx.mapped, "unsupported": ctx.unsupported, "ignored": ctx.ignored}[kind]
            if kind == "mapped":
                ctx.mapped(level.keys[name], detail, level.values[name])
            else:
                report(level.keys[name], level.values[name], detail)
