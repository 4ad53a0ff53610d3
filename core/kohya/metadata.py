"""The metadata of a Kohya LoRA file (ss_*, modelspec.*, sshs_*) and writing the file.

Front ends and model sites read these keys: the web UIs show the training settings and
tag frequencies, and identify a file by sshs_model_hash. sd-scripts writes every value as
Python's str() of the argument (so booleans are "True" / "False", a missing value
"None") and nested values as JSON; we write the same spellings.

Simple settings are taken from the schema: a field whose ``kohya=`` name sd-scripts writes
as ``ss_<name>`` lands there, so a renamed field cannot silently drop out of the file.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import time
from typing import TYPE_CHECKING, Any

from core.system.atomic import write_bytes_atomic
from core.data.buckets import predefined_buckets
from core.data.captions import tag_frequency as count_tags
from core.config.schema import GROUPS, LatentCache, NetworkParams, NetworkType, SubsetParams, TrainConfig
from core.config.params import iter_params
from core.data.dataset_plan import DatasetPlan

if TYPE_CHECKING:  # pragma: no cover - typing only
    from core.models.family import Family
    import os

    import torch

NETWORK_MODULE = "networks.lora"
LYCORIS_MODULE = "lycoris.kohya"
MODEL_HASH_KEY = "sshs_model_hash"
LEGACY_HASH_KEY = "sshs_legacy_hash"

# sd-scripts arguments that train_network.py writes verbatim as "ss_<argument>".
SCHEMA_KEYS = frozenset({
    "network_dim", "network_alpha", "network_dropout", "learning_rate", "unet_lr",
    "text_encoder_lr", "lr_scheduler", "seed", "clip_skip", "mixed_precision",
    "gradient_checkpointing", "gradient_accumulation_steps", "max_grad_norm", "noise_offset",
    "min_snr_gamma", "output_name", "training_comment", "prior_loss_weight", "enable_bucket",
    "min_bucket_reso", "max_bucket_reso", "bucket_no_upscale", "max_token_length",
    "fp8_base", "fp8_base_unet", "adaptive_noise_scale", "multires_noise_iterations",
    "multires_noise_discount", "ip_noise_gamma", "ip_noise_gamma_random_strength", "scale_weight_norms",
    "masked_loss", "noise_offset_random_strength",
})
# Per-subset options that sd-scripts (without a dataset config) writes as one global value.
_SUBSET_FLAGS = ("flip_aug", "shuffle_caption", "random_crop")
_SUBSET_NUMBERS = ("keep_tokens", "caption_dropout_rate", "caption_tag_dropout_rate")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _schema_entries(config: TrainConfig) -> dict[str, str]:
    entries: dict[str, str] = {}
    for group_name, cls in GROUPS.items():
        group = getattr(config, group_name)
        for spec in iter_params(cls):
            if spec.info.kohya in SCHEMA_KEYS:
                entries[f"ss_{spec.info.kohya}"] = str(getattr(group, spec.name))
    return entries


def _base_caption(caption: str, options: SubsetParams) -> str:
    # core.data.scan stores prefix + " " + caption + " " + suffix (empty parts left out);
    # sd-scripts counts tags of the caption file alone, so undo the join.
    prefix, suffix = options.caption_prefix, options.caption_suffix
    if prefix and (caption == prefix or caption.startswith(prefix + " ")):
        caption = caption[len(prefix) + 1:]
    if suffix and (caption == suffix or caption.endswith(" " + suffix)):
        caption = caption[: max(0, len(caption) - len(suffix) - 1)]
    return caption


def tag_frequency(plan: DatasetPlan) -> dict[str, dict[str, int]]:
    """{subset folder name: {tag: count}} from the plan's captions, as ss_tag_frequency.

    Differs from sd-scripts only in which images count: the plan holds the images that
    train, so regularisation images beyond the top-up and images too small for any
    bucket are not counted (sd-scripts reads their captions before dropping them).
    """
    captions: dict[str, list[str]] = {}
    for image in plan.images:
        subset = plan.subsets[image.record.subset_index]
        captions.setdefault(subset.name, []).append(_base_caption(image.record.caption, subset.params))
    return {name: count_tags(texts) for name, texts in captions.items()}


# ss_tag_frequency is for people and web UIs browsing a LoRA's training tags. sd-scripts
# stores every tag; one runaway caption (a 1 MB file of 120,000 "tags") then bloats every
# saved file's header by megabytes. So it keeps, per folder, the most used tags, and no
# "tag" longer than a sentence fragment.
MAX_TAGS_PER_FOLDER = 1000
MAX_TAG_CHARS = 200


def limit_tag_frequency(frequency: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """At most MAX_TAGS_PER_FOLDER tags per folder, the most used, none over MAX_TAG_CHARS.

    The shape stays sd-scripts' {folder: {tag: count}}, and the kept tags keep their order,
    so a dataset within the limits gets exactly sd-scripts' value.
    """
    limited: dict[str, dict[str, int]] = {}
    for folder, counts in frequency.items():
        short = {tag: n for tag, n in counts.items() if len(tag) <= MAX_TAG_CHARS}
        if len(short) > MAX_TAGS_PER_FOLDER:
            # sorted() is stable, so among equally used tags the first seen are kept.
            kept = set(sorted(short, key=lambda tag: -short[tag])[:MAX_TAGS_PER_FOLDER])
            short = {tag: n for tag, n in short.items() if tag in kept}
        limited[folder] = short
    return limited


def bucket_info(plan: DatasetPlan) -> dict[str, Any]:
    """ss_bucket_info: non-empty buckets under sd-scripts' bucket index, and the AR error.

    sd-scripts numbers a bucket by its place in the predefined (sorted) bucket list, empty
    buckets included; in no-upscale mode buckets are made per image and the used ones sorted.
    """
    predefined = predefined_buckets(plan.settings)
    order = predefined if predefined else sorted(plan.buckets)
    index = {bucket: i for i, bucket in enumerate(order)}
    buckets = {str(index[b]): {"resolution": list(b), "count": n}
               for b, n in sorted(plan.buckets.items(), key=lambda item: index[item[0]])}
    return {"buckets": buckets, "mean_img_ar_error": plan.mean_ar_error}


def dataset_dirs(plan: DatasetPlan, *, reg: bool) -> dict[str, dict[str, int]]:
    """ss_dataset_dirs (or ss_reg_dataset_dirs): {folder name: {n_repeats, img_count}}."""
    counts: dict[int, int] = {}
    for image in plan.images:
        counts[image.record.subset_index] = counts.get(image.record.subset_index, 0) + 1
    dirs: dict[str, dict[str, int]] = {}
    for i, subset in enumerate(plan.subsets):
        if subset.params.is_reg == reg:
            dirs[subset.name] = {"n_repeats": subset.params.num_repeats, "img_count": counts.get(i, 0)}
    return dirs


def network_module(config: TrainConfig) -> str:
    """ss_network_module: Kohya's networks.lora for LoRA and LoCon, LyCORIS's lycoris.kohya for
    LoHa, LoKr, IA3 and anything with DoRA (as kohya_ss trains them)."""
    net = config.network
    return LYCORIS_MODULE if net.type.is_lycoris or net.dora_wd else NETWORK_MODULE


def network_args(config: TrainConfig) -> dict[str, str]:
    """ss_network_args: sd-scripts stores the network_args strings it was given, so strings; for
    LyCORIS the ones kohya_ss passes lycoris.kohya (algo, conv_dim/alpha, dora_wd, LoKr's)."""
    net = config.network
    conv = {"conv_dim": str(net.conv_dim), "conv_alpha": f"{net.conv_alpha:g}"} if net.type.has_conv else {}
    if network_module(config) == NETWORK_MODULE:
        return {**conv, **_lora_options(net)}
    from core.models.lora import lycoris_algo

    algo = "lora" if net.type is NetworkType.LORA else lycoris_algo(net)
    args = {"algo": algo, **conv}
    if net.type is NetworkType.IA3:
        return {**args, "preset": "ia3"}  # LyCORIS's ia3 preset: the layers LoRA Kiln scales
    args["dora_wd"] = str(net.dora_wd)
    if net.type is NetworkType.LOKR:
        args.update(factor=str(net.lokr_factor), full_matrix=str(net.lokr_full_matrix),
                    decompose_both=str(net.lokr_decompose_both))
    return args


def _lora_options(net: NetworkParams) -> dict[str, str]:
    """networks.lora's rank/module dropout and per-block settings, as the network_args strings
    sd-scripts reads (and stores in ss_network_args); those left at off are not written."""
    from core.kohya.import_keys import LORA_NETWORK_OPTIONS

    options: dict[str, str] = {}
    for name in LORA_NETWORK_OPTIONS:
        value = getattr(net, name)
        if isinstance(value, str):
            if value.strip():
                options[name] = "".join(value.split())  # network_args items end at whitespace
        elif value:
            options[name] = f"{value:g}"
    return options


def _subset_entries(config: TrainConfig, plan: DatasetPlan) -> dict[str, str]:
    # Our options are per subset; sd-scripts' global keys get "on if any training subset
    # has it" for switches and the largest value for numbers.
    options = [s.params for s in plan.subsets if not s.params.is_reg]
    options = options or [s.params for s in plan.subsets] or list(config.dataset.subsets) or [SubsetParams()]
    entries = {f"ss_{name}": str(any(getattr(o, name) for o in options)) for name in _SUBSET_FLAGS}
    entries.update({f"ss_{name}": str(max(getattr(o, name) for o in options)) for name in _SUBSET_NUMBERS})
    return entries


def _validation_entries(config: TrainConfig, plan: DatasetPlan) -> dict[str, str]:
    # sd-scripts' spellings: an unset option is None (our 0 / -1 mean the same "not set").
    dataset, training = config.dataset, config.training

    def unset_when(value: int, off: int) -> str:
        return "None" if value == off else str(value)

    return {
        "ss_num_validation_images": str(len(plan.validation)),
        "ss_validation_seed": unset_when(dataset.validation_seed, -1),
        "ss_validation_split": str(float(dataset.validation_split)),
        "ss_max_validation_steps": unset_when(training.max_validation_steps, 0),
        "ss_validate_every_n_epochs": str(training.validate_every_n_epochs),
        "ss_validate_every_n_steps": unset_when(training.validate_every_n_steps, 0),
    }


def _file_name(path: str) -> str:
    # Base name whichever separator the path uses (a Windows path read on Linux too).
    return re.split(r"[\\/]", path.rstrip("\\/"))[-1] if path else path


def modelspec(config: TrainConfig, architecture: str, *, title: str, timestamp: float) -> dict[str, str]:
    """The Stability AI model-spec keys sd-scripts adds to every LoRA it saves; the
    architecture is the family's ("stable-diffusion-v1/lora")."""
    width, height = config.dataset.resolution
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture,
        "modelspec.implementation": "diffusers",
        "modelspec.title": title or config.output.output_name or "untitled",
        "modelspec.resolution": f"{width}x{height}",
        # sd-scripts: local time, whole seconds, no zone.
        "modelspec.date": datetime.datetime.fromtimestamp(int(timestamp)).isoformat(),
        "modelspec.prediction_type": "v" if config.model.v_parameterization else "epsilon",
        "modelspec.encoder_layer": str(config.model.clip_skip),
    }


def build_metadata(config: TrainConfig, plan: DatasetPlan, *, epoch: int, step: int, session_id: str,
                   training_started_at: float, training_finished_at: float | None, model_name: str,
                   title: str, tag_frequency_override: dict[str, dict[str, int]] | None = None,
                   num_processes: int = 1, family: Family) -> dict[str, str]:
    """All metadata of a LoRA file saved at ``epoch`` / ``step`` (hashes come at saving).

    ``training_finished_at`` None means "now": sd-scripts stamps every save, intermediate
    ones included. Pass ``tag_frequency_override`` (ScanResult.tag_frequency) to count
    exactly as sd-scripts does, surplus regularisation images included. Either way the
    tags are limited as limit_tag_frequency says.
    """
    from core.config.optimizers import optimizer_description, warmup_steps

    finished = time.time() if training_finished_at is None else training_finished_at
    steps = plan.steps
    max_steps = steps.max_train_steps if steps else 0
    training = config.training
    own = family.lora_metadata(config)
    meta: dict[str, str] = {
        "ss_session_id": session_id,
        "ss_training_started_at": str(training_started_at),
        "ss_training_finished_at": str(finished),
        "ss_network_module": network_module(config),
        "ss_network_args": _json(network_args(config)),
        "ss_base_model_version": own["ss_base_model_version"],
        "ss_v2": own["ss_v2"],
        "ss_resolution": str(tuple(config.dataset.resolution)),
        "ss_batch_size_per_device": str(training.batch_size),
        "ss_total_batch_size": str(training.batch_size * num_processes * training.gradient_accumulation_steps),
        "ss_num_train_images": str(plan.num_train_images),
        "ss_num_reg_images": str(plan.num_reg_images),
        "ss_num_batches_per_epoch": str(plan.batches_per_epoch),
        "ss_num_epochs": str(steps.epochs if steps else 0),
        "ss_epoch": str(epoch),
        "ss_steps": str(step),
        "ss_max_train_steps": str(max_steps),
        "ss_lr_warmup_steps": str(warmup_steps(config.schedule, max_steps)),
        "ss_optimizer": optimizer_description(config.optimizer),
        "ss_cache_latents": str(config.dataset.latent_cache is not LatentCache.OFF),
        "ss_sd_model_name": _file_name(model_name),
        "ss_full_fp16": "False",
        "ss_color_aug": "False",
        "ss_bucket_info": _json(bucket_info(plan)),
        "ss_tag_frequency": _json(limit_tag_frequency(
            tag_frequency_override if tag_frequency_override is not None else tag_frequency(plan))),
        "ss_dataset_dirs": _json(dataset_dirs(plan, reg=False)),
        "ss_reg_dataset_dirs": _json(dataset_dirs(plan, reg=True)),
        # sd-scripts names this one after the idea, not the argument (debiased_estimation_loss).
        "ss_debiased_estimation": str(training.debiased_estimation_loss),
    }
    meta.update(_schema_entries(config))
    meta.update(_subset_entries(config, plan))
    meta.update(_validation_entries(config, plan))
    if config.model.vae:
        meta["ss_vae_name"] = _file_name(config.model.vae)
    meta.update(modelspec(config, own["modelspec.architecture"], title=title, timestamp=finished))
    return meta


def _data_region(blob: bytes) -> bytes:
    header_len = int.from_bytes(blob[:8], "little")
    return blob[8 + header_len:]


def model_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) as sd-scripts precomputes them.

    Both are taken from the file written with the ss_* keys only, so that adding user
    metadata later does not change them. The model hash covers only the tensor bytes
    after the header; the legacy hash is the first 8 hex digits of the sha256 of the
    64 KiB at byte offset 1 MiB of that file (of nothing, for a smaller file).
    """
    from safetensors.torch import save

    blob = save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    model_hash = hashlib.sha256(_data_region(blob)).hexdigest()
    legacy_hash = hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy_hash


def save_lora_file(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor],
                   metadata: dict[str, str]) -> str:
    """Write a LoRA .safetensors atomically with its hashes added; returns sshs_model_hash."""
    from safetensors.torch import save

    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"LoRA metadata values must be strings; not: {', '.join(map(str, bad))}")
    meta = {k: v for k, v in metadata.items() if k not in (MODEL_HASH_KEY, LEGACY_HASH_KEY)}
    model_hash, legacy_hash = model_hashes(tensors, meta)
    meta[MODEL_HASH_KEY] = model_hash
    meta[LEGACY_HASH_KEY] = legacy_hash
    blob = save(tensors, meta)
    # The hash names the tensor bytes; the header is laid out before them, so adding
    # metadata must not move or change them. Check rather than trust.
    if hashlib.sha256(_data_region(blob)).hexdigest() != model_hash:
        raise RuntimeError("safetensors changed the tensor data when metadata was added")
    write_bytes_atomic(path, blob)
    return model_hash

