"""LoRA_Easy_Training_Scripts' TOML: its sections read as the sd-scripts arguments and the
dataset config they stand for.

The file groups sd-scripts' options by the UI's panels: each panel is a table with an
``args`` table (training arguments) and/or a ``dataset_args`` table (dataset options), e.g.
``[general_args.args]``, ``[network_args.args]``, ``[bucket_args.dataset_args]``; the
optimizer's and the network's own arguments are tables inside those
(``[optimizer_args.args.optimizer_args]``), and the image folders are top-level
``[[subsets]]``. Read section by section, every panel counts; flattened the way an
sd-scripts config is, every panel's ``args`` would overwrite the one before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EASY = "LoRA_Easy_Training_Scripts TOML"

# Arguments the file holds as tables of name = value, sd-scripts as a list of "name=value".
_ARGUMENT_TABLES = ("optimizer_args", "network_args", "lr_scheduler_args")
# The UI's own label of a subset: it names the subset in the UI and nothing else.
_SUBSET_LABEL = "name"


@dataclass
class EasyConfig:
    args: dict[str, Any] = field(default_factory=dict)  # sd-scripts argument name -> value
    shown: dict[str, str] = field(default_factory=dict)  # the same names -> key as the file has it
    dataset: dict[str, Any] = field(default_factory=dict)  # a dataset config: [general], [[datasets]]
    doc_keys: dict[str, str] = field(default_factory=dict)  # dataset-config key -> key as the file has it
    ignored: list[tuple[str, Any, str]] = field(default_factory=list)  # (key, value, why)
    warnings: list[str] = field(default_factory=list)
    train_mode: str = "lora"
    implied: dict[str, Any] = field(default_factory=dict)  # arguments the UI adds when it runs sd-scripts


def is_easy_config(data: dict[str, Any]) -> bool:
    """True for LoRA_Easy_Training_Scripts' layout: panels of args/dataset_args, or [train_mode]."""
    if isinstance(data.get("train_mode"), dict):
        return True
    return any(isinstance(value, dict) and key.endswith("_args")
               and any(isinstance(value.get(part), dict) for part in ("args", "dataset_args"))
               for key, value in data.items())


def read_easy_config(data: dict[str, Any]) -> EasyConfig:
    """Every section of the file, as arguments and a dataset config; a key that two sections
    set is warned about, naming both and the one that is used (the later one, as the UI
    merges its panels in file order)."""
    easy = EasyConfig()
    general: dict[str, Any] = {}
    for section, value in data.items():
        if section == "subsets":
            continue
        if section == "train_mode" and isinstance(value, dict):
            easy.train_mode = str(value.get("train_mode", "lora"))
            easy.ignored += [(f"train_mode.{k}", v, "LoRA training, as LoRA Kiln's") for k, v in value.items()]
            continue
        if not isinstance(value, dict):  # a plain key at the top: an argument, as in sd-scripts
            _put(easy, easy.args, easy.shown, section, value, section)
            continue
        for part, table in value.items():
            where = f"{section}.{part}"
            if part == "args" and isinstance(table, dict):
                for key, item in table.items():
                    if key in _ARGUMENT_TABLES and isinstance(item, dict):
                        item = [f"{name}={arg}" for name, arg in item.items()]
                    _put(easy, easy.args, easy.shown, key, item, f"{where}.{key}")
            elif part == "dataset_args" and isinstance(table, dict):
                for key, item in table.items():
                    _put(easy, general, easy.doc_keys, key, item, f"{where}.{key}", doc=True)
            else:  # a panel that holds its options directly
                _put(easy, easy.args, easy.shown, part, table, where)
    if "warmup_ratio" in easy.args and "lr_warmup_steps" not in easy.args:
        # The UI's warmup is a fraction of the steps; sd-scripts reads lr_warmup_steps below 1 so.
        easy.args["lr_warmup_steps"] = easy.args.pop("warmup_ratio")
        easy.shown["lr_warmup_steps"] = easy.shown.pop("warmup_ratio")
    if "network_module" not in easy.args and "network_args" in easy.args:
        # The UI writes no network_module: LyCORIS's when network_args name an algo, else Kohya's.
        algo = any(str(item).startswith("algo=") for item in easy.args["network_args"])
        easy.implied["network_module"] = "lycoris.kohya" if algo else "networks.lora"
    subsets = data.get("subsets", [])
    tables = subsets if isinstance(subsets, list) else []
    for index, subset in enumerate(tables):
        if isinstance(subset, dict) and _SUBSET_LABEL in subset:
            subset = dict(subset)
            easy.ignored.append((f"subsets[{index}].{_SUBSET_LABEL}", subset.pop(_SUBSET_LABEL),
                                 "the subset's label in LoRA_Easy_Training_Scripts (no effect on training)"))
            tables[index] = subset
        if isinstance(subset, dict):
            for key in subset:
                easy.doc_keys[f"datasets[0].subsets[{index}].{key}"] = f"subsets[{index}].{key}"
    easy.dataset = {"general": general, "datasets": [{"subsets": tables if isinstance(subsets, list) else subsets}]}
    for key in general:
        easy.doc_keys[f"general.{key}"] = easy.doc_keys.pop(key)
    return easy


def _put(easy: EasyConfig, target: dict[str, Any], shown: dict[str, str], key: str, value: Any,
         where: str, doc: bool = False) -> None:
    if key in target:
        before = shown[key]
        easy.warnings.append(f"'{key}' is set in two sections, {before} = {target[key]!r} and {where} = "
                             f"{value!r}: {where} comes later in the file and is used")
        easy.ignored.append((before, target[key], f"{where} is also set, and is used"))
    target[key] = value
    shown[key] = where
