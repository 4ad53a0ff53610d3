"""Export a configuration as sd-scripts' config TOML and dataset config TOML.

The same training run by ``accelerate launch train_network.py --config_file config.toml``
(``sdxl_train_network.py`` for an SDXL model).
Argument names come from the schema's ``kohya=`` names (the same ones the importer reads);
only what has no one-to-one name is written here by hand: the network module and its
arguments, the optimizer's arguments, the warmup, the training length, the latent cache,
attention, checkpoints kept, sample prompts, logging and SDXL's text-encoder options.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from core import __version__
from core.system.atomic import write_text_atomic
from core.config.schema import (GROUPS, Attention, Duration, LatentCache, ModelFamily, SubsetParams,
                                TextEncoderCache, TrainConfig)
from core.data.scan import DatasetError, kohya_subsets
from core.kohya.import_dataset import DATASET_KEYS, SUBSET_KEYS
from core.config.params import PathKind, param_specs
from core.system.resources import is_builtin, resolve_builtin

CONFIG_NAME, DATASET_NAME, PROMPTS_NAME = "config.toml", "dataset.toml", "prompts.txt"
NETWORK_MODULE = "networks.lora"
# Written below rather than by the schema loop: they have no one-to-one argument.
_BY_HAND = frozenset({"conv_dim", "conv_alpha", "max_train_epochs", "max_train_steps", "lr_warmup_steps",
                      # networks.lora's own options: network_args strings (core.kohya.metadata.network_args)
                      "rank_dropout", "module_dropout", "down_lr_weight", "mid_lr_weight", "up_lr_weight",
                      "block_lr_zero_threshold", "block_dims", "block_alphas", "conv_block_dims",
                      "conv_block_alphas"})
# sd-scripts divides by these or reads 0 as a setting; its "off" is leaving them out.
_OFF_WHEN_ZERO = frozenset({"save_every_n_epochs", "save_every_n_steps", "sample_every_n_steps",
                            "sample_every_n_epochs", "min_snr_gamma", "adaptive_noise_scale",
                            "multires_noise_iterations", "ip_noise_gamma", "scale_weight_norms",
                            "validate_every_n_steps", "max_validation_steps", "validation_split"})
# noise_offset_random_strength is a switch sd-scripts reads only with a noise offset: written when on.
# Per-subset identity; every other subset option may move to [general] when all agree.
_SUBSET_OWN = ("image_dir", "num_repeats", "class_tokens", "is_reg")
_PROMPT_OPTION = re.compile(r"\s--(\w+)(?=\s|$)")


class KohyaExportError(ValueError):
    """A configuration sd-scripts could not train as it stands; the message names the field."""


@dataclass
class KohyaExport:
    config_toml: str
    dataset_toml: str
    prompts: str = ""  # the text of prompts.txt; empty when there are no sample prompts
    notes: list[str] = field(default_factory=list)


def model_family(config: TrainConfig) -> ModelFamily:
    """The family the config trains: its setting, or with "auto" the base model's own (SD 1.x
    when the file is not here to look at)."""
    from core.models.family import UnsupportedFamily, family_for

    if config.model.family is not ModelFamily.AUTO:
        return config.model.family
    try:
        return ModelFamily(family_for(config.model.base_model, config.model.family).name)
    except (UnsupportedFamily, ValueError):
        return ModelFamily.SD1


def script_name(config: TrainConfig) -> str:
    """The sd-scripts script that trains ``config``'s LoRA."""
    return "sdxl_train_network.py" if model_family(config) is ModelFamily.SDXL else "train_network.py"


def export_kohya(config: TrainConfig, out_dir: Path | None = None) -> tuple[str, str]:
    """(config TOML, dataset config TOML) for sd-scripts' train_network.py (SDXL: sdxl_train_network.py)."""
    exported = build_export(config, out_dir)
    return exported.config_toml, exported.dataset_toml


def build_export(config: TrainConfig, out_dir: Path | None = None) -> KohyaExport:
    """Everything export writes; file references point into ``out_dir`` (absolute) when given."""
    _refuse_builtin_model(config)
    folder = out_dir.resolve() if out_dir is not None else None
    notes: list[str] = []
    prompts = _prompts_text(config)
    sections = _config_sections(config, folder, notes, has_prompts=bool(prompts))
    dataset = _dataset_doc(config, notes)
    script = script_name(config)
    config_toml = _header(f"sd-scripts {script} config", notes) + \
        f"# Run: accelerate launch {script} --config_file config.toml\n" + \
        "# (sd-scripts reads the sections below as plain argument names.)\n\n" + tomli_w.dumps(sections)
    dataset_toml = _header("sd-scripts dataset config", []) + "\n" + tomli_w.dumps(dataset)
    return KohyaExport(config_toml, dataset_toml, prompts, notes)


def _refuse_builtin_model(config: TrainConfig) -> None:
    # A built-in model is a toy-size model LoRA Kiln builds from a seed: there is no file or
    # folder to name, and written out it still would not load in sd-scripts, whose U-Net has
    # SD 1.x's fixed block widths. A config naming a folder that does not exist (or one that
    # fails there) is worse than a clear refusal here.
    base = config.model.base_model.strip()
    if is_builtin(base):
        raise KohyaExportError(
            f"model.base_model is {base}, LoRA Kiln's tiny built-in demo model (random weights, built by "
            "LoRA Kiln, not a file), which sd-scripts cannot load; choose a real SD 1.x or SDXL checkpoint "
            "first, e.g. --set model.base_model=/path/to/model.safetensors")


def write_export(exported: KohyaExport, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [(out_dir / CONFIG_NAME, exported.config_toml), (out_dir / DATASET_NAME, exported.dataset_toml)]
    if exported.prompts:
        files.append((out_dir / PROMPTS_NAME, exported.prompts))
    for path, text in files:
        write_text_atomic(path, text)
    return [path for path, _ in files]


def _header(what: str, notes: list[str]) -> str:
    lines = [f"# {what}, written by LoRA Kiln {__version__} (lorakiln export-kohya)."]
    lines += [f"# note: {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


def _path(value: str) -> str:
    return str(resolve_builtin(value)) if is_builtin(value) else value


def _config_sections(config: TrainConfig, folder: Path | None, notes: list[str],
                     has_prompts: bool) -> dict[str, dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {}
    for group, cls in GROUPS.items():
        section = sections.setdefault(group, {})
        obj = getattr(config, group)
        for spec in param_specs(cls):
            name = spec.info.kohya
            if not name or name in _BY_HAND or name in DATASET_KEYS or spec.name == "subsets":
                continue
            value = getattr(obj, spec.name)
            if value is None or value == "" or (name in _OFF_WHEN_ZERO and value == 0):
                continue
            section[name] = _path(value) if spec.info.path is not PathKind.NONE else _plain(value)
    _network(config, sections["network"])
    _optimizer(config, sections["optimizer"], notes)
    _length(config, sections, notes)
    _files(config, sections, folder, notes, has_prompts)
    return {name: section for name, section in sections.items() if section}


def _network(config: TrainConfig, section: dict[str, Any]) -> None:
    from core.kohya.metadata import network_args, network_module

    net = config.network
    section["network_module"] = network_module(config)
    args = network_args(config)
    if args:
        section["network_args"] = [f"{name}={value}" for name, value in args.items()]
    if not net.train_text_encoder:
        section["network_train_unet_only"] = True
    if not net.train_unet:
        section["network_train_text_encoder_only"] = True


def _arg_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(repr(v) for v in value)  # sd-scripts reads "0.9,0.99" as a tuple
    return repr(value) if isinstance(value, float) else str(value)


def _optimizer(config: TrainConfig, section: dict[str, Any], notes: list[str]) -> None:
    # The keyword arguments LoRA Kiln's trainer itself passes, so both train the same.
    from core.config.optimizers import OptimizerSetupError, optimizer_class_and_kwargs

    try:
        _, kwargs = optimizer_class_and_kwargs(config.optimizer, check_only=True)
    except OptimizerSetupError as err:
        notes.append(str(err))
        kwargs = dict(config.optimizer.extra_args)
    # sd-scripts reads each value as a Python literal, and "inf" is none; the optimizers'
    # default growth rate is unbounded anyway.
    args = [f"{k}={_arg_text(v)}" for k, v in kwargs.items() if not (k == "growth_rate" and v == float("inf"))]
    if args:
        section["optimizer_args"] = args


def _length(config: TrainConfig, sections: dict[str, dict[str, Any]], notes: list[str]) -> None:
    train, sched = config.training, config.schedule
    if train.duration is Duration.EPOCHS:
        sections["training"]["max_train_epochs"] = train.max_train_epochs
    else:
        sections["training"]["max_train_steps"] = train.max_train_steps
    # sd-scripts reads lr_warmup_steps below 1 as a fraction of the training steps.
    sections["schedule"]["lr_warmup_steps"] = sched.warmup_ratio if sched.warmup_ratio else sched.warmup_steps
    if train.attention is Attention.SDPA:
        sections["training"]["sdpa"] = True
    family = model_family(config)
    if family is ModelFamily.SD2:
        sections["model"]["v2"] = True
    elif family is ModelFamily.SDXL:
        _sdxl(config, sections, notes)
    data = sections["dataset"]
    data["cache_latents"] = config.dataset.latent_cache is not LatentCache.OFF
    data["cache_latents_to_disk"] = config.dataset.latent_cache is LatentCache.DISK
    out = config.output
    if out.keep_last_n and out.save_every_n_epochs:
        sections["output"]["save_last_n_epochs"] = out.keep_last_n
    if out.keep_last_n and out.save_every_n_steps:
        # sd-scripts keeps step checkpoints by age in steps, not by count.
        sections["output"]["save_last_n_steps"] = out.keep_last_n * out.save_every_n_steps


def _sdxl(config: TrainConfig, sections: dict[str, dict[str, Any]], notes: list[str]) -> None:
    """sdxl_train_network.py's own arguments, and what its networks.lora cannot do."""
    net, opt, data = config.network, config.optimizer, config.dataset
    notes.append("an SDXL model: run sdxl_train_network.py (not train_network.py)")
    if config.model.clip_skip == 1:  # sd-scripts warns about any clip_skip in SDXL training
        sections["model"].pop("clip_skip", None)
    trains_encoders = net.train_text_encoder and (net.train_text_encoder_1 or net.train_text_encoder_2)
    fixed = all(not (s.shuffle_caption or s.caption_dropout_rate or s.caption_tag_dropout_rate)
                for s in data.subsets)
    if data.text_encoder_cache is not TextEncoderCache.OFF and not trains_encoders and fixed:
        # sd-scripts refuses the cache otherwise; LoRA Kiln's memory cache is "when possible".
        sections["dataset"]["cache_text_encoder_outputs"] = True
        if data.text_encoder_cache is TextEncoderCache.DISK:
            sections["dataset"]["cache_text_encoder_outputs_to_disk"] = True
    if net.train_text_encoder and net.train_text_encoder_1 != net.train_text_encoder_2:
        notes.append(f"network.train_text_encoder_{1 if net.train_text_encoder_1 else 2}: LoRA Kiln trains one "
                     "SDXL text encoder only; sd-scripts' networks.lora trains both or neither (both here)")
    elif net.train_text_encoder and not net.train_text_encoder_1:
        sections["network"]["network_train_unet_only"] = True  # both switched off
        sections["optimizer"].pop("text_encoder_lr", None)
    if trains_encoders and opt.text_encoder_2_lr is not None and opt.text_encoder_2_lr != \
            (opt.learning_rate if opt.text_encoder_lr is None else opt.text_encoder_lr):
        notes.append(f"optimizer.text_encoder_2_lr ({opt.text_encoder_2_lr:g}) is not written: sd-scripts' "
                     "networks.lora trains both SDXL text encoders at text_encoder_lr")


def _files(config: TrainConfig, sections: dict[str, dict[str, Any]], folder: Path | None,
           notes: list[str], has_prompts: bool) -> None:
    def beside(name: str) -> str:
        return str(folder / name) if folder is not None else name

    if not config.model.base_model:
        notes.append("model.base_model is empty: set pretrained_model_name_or_path before training")
    if not config.dataset.subsets:
        notes.append("dataset.subsets is empty: add [[datasets.subsets]] before training")
    out = sections["output"]
    if not config.output.output_dir:
        out["output_dir"] = beside("output")
        notes.append(f"output.output_dir is empty (LoRA Kiln's runs folder); sd-scripts writes to "
                     f"{out['output_dir']}")
    sections["dataset"]["dataset_config"] = beside(DATASET_NAME)
    if has_prompts:
        sections["sampling"]["sample_prompts"] = beside(PROMPTS_NAME)
    if config.sampling.at_step_0:
        sections["sampling"]["sample_at_first"] = True
    if config.logging.tensorboard:
        base = Path(out["output_dir"]) if "output_dir" in out else Path(beside("."))
        sections["logging"]["logging_dir"] = str(base / "logs")


def _prompts_text(config: TrainConfig) -> str:
    """The prompts with LoRA Kiln's per-prompt defaults written out (sd-scripts has others)."""
    sample = config.sampling
    defaults = {"w": sample.width, "h": sample.height, "s": sample.steps, "l": f"{sample.cfg_scale:g}",
                "d": sample.seed}
    lines, found = [], False
    for line in sample.prompts.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            found = True
            given = set(_PROMPT_OPTION.findall(" " + line))
            line = line.rstrip() + "".join(f" --{k} {v}" for k, v in defaults.items() if k not in given)
        lines.append(line)
    return "\n".join(lines) + "\n" if found else ""


def _subset_table(params: SubsetParams, image_dir: str) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name, spec in SUBSET_KEYS.items():
        value = image_dir if name == "image_dir" else getattr(params, spec.name)
        if value == "" or (name == "is_reg" and not value):
            continue
        table[name] = _plain(value)
    return table


def _dataset_doc(config: TrainConfig, notes: list[str]) -> dict[str, Any]:
    data = config.dataset
    subsets: list[dict[str, Any]] = []
    for index, subset in enumerate(data.subsets):
        field_path = f"dataset.subsets[{index}].image_dir"
        if not subset.kohya_layout:
            subsets.append(_subset_table(subset, _path(subset.image_dir)))
            continue
        try:  # sd-scripts' dataset config has no Kohya layout: one subset per N_name folder
            found = kohya_subsets(subset.image_dir, is_reg=subset.is_reg, template=subset, warnings=notes,
                                  field=field_path)
        except DatasetError as err:
            why = str(err).split("; choose")[0].removeprefix(f"{field_path}: ")
            notes.append(f"{field_path}: its N_name folders cannot be listed here ({why}); written as "
                         "one subset as given: list its sub-folders as subsets before training")
            subsets.append(_subset_table(subset, _path(subset.image_dir)))
            continue
        subsets += [_subset_table(r.params, str(r.image_dir)) for r in found]
    general: dict[str, Any] = {}
    for name in SUBSET_KEYS:
        values = [s.get(name) for s in subsets]
        if name not in _SUBSET_OWN and subsets and name in subsets[0] and values.count(values[0]) == len(values):
            general[name] = values[0]
            for table in subsets:
                del table[name]
    dataset: dict[str, Any] = {}
    for name, (group, spec) in DATASET_KEYS.items():
        value = getattr(getattr(config, group), spec.name)
        if value is None or (name in _OFF_WHEN_ZERO and value == 0) or (name == "validation_seed" and value < 0):
            continue
        dataset[name] = _plain(value)
    if data.validation_dir:
        notes.append("dataset.validation_dir: sd-scripts has no validation folder; set validation_split instead "
                     "(the folder is not exported)")
    dataset["subsets"] = subsets
    return {"general": general, "datasets": [dataset]} if general else {"datasets": [dataset]}
