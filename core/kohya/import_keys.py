"""What the Kohya importer knows about keys it does not map one-to-one, and value helpers.

The one-to-one mapping comes from the schema (``kohya=`` in core/config/schema.py); this module
holds only what the schema cannot say: value spellings of other tools, why a key is not
supported, and which values mean "this feature is off" so such keys can be listed as
ignored instead of cluttering the unsupported list.
"""

from __future__ import annotations

import ast
import enum
import math
import re
import typing
from collections.abc import Callable, Mapping
from typing import Any

from core.config.schema import NetworkType, OptimizerType, Sampler
from core.config.params import optional_inner

OFF = "empty or off"  # the reason given for every ignored empty or switched-off value

# DatasetParams fields that sd-scripts reads as ordinary training arguments, never from a
# dataset config's [general] or [[datasets]] tables.
DATASET_ARGUMENT_FIELDS = frozenset({"prior_loss_weight", "vae_batch_size", "max_data_loader_n_workers",
                                     "masked_loss"})

# kohya_ss renamed a few keys over the years; old presets still carry the old names.
KEY_ALIASES: dict[str, str] = {
    "max_resolution": "resolution",  # kohya_ss's name for sd-scripts' --resolution
    "optimizer": "optimizer_type",  # kohya_ss's name for sd-scripts' --optimizer_type
    "lora_network_weights": "network_weights",  # kohya_ss before v23
}

# kohya_ss "LoRA_type" -> network. "Kohya LoCon" is networks.lora with conv_dim, exactly our
# LoCon; LyCORIS's LoCon (LoCon, LyCORIS/LoCon) adapts the same layers, so it is trained
# as Kohya's LoCon (the caller warns). LoHa, LoKr and iA3 are LyCORIS's (lycoris.kohya).
NETWORK_TYPES: dict[str, NetworkType] = {
    "standard": NetworkType.LORA,
    "kohya locon": NetworkType.LOCON,
    "locon": NetworkType.LOCON,
    "lycoris/locon": NetworkType.LOCON,
    "loha": NetworkType.LOHA,
    "lycoris/loha": NetworkType.LOHA,
    "lokr": NetworkType.LOKR,
    "lycoris/lokr": NetworkType.LOKR,
    "ia3": NetworkType.IA3,
    "lycoris/ia3": NetworkType.IA3,
}
# lycoris.kohya's network_args algo -> network ("lora" is LyCORIS's LoRA/LoCon module).
LYCORIS_ALGOS: dict[str, NetworkType] = {
    "lora": NetworkType.LORA, "locon": NetworkType.LOCON, "loha": NetworkType.LOHA,
    "lokr": NetworkType.LOKR, "ia3": NetworkType.IA3,
}
# LyCORIS options LoRA Kiln trains with: kohya_ss key / network_args name -> NetworkParams field.
LYCORIS_OPTIONS: dict[str, str] = {
    "dora_wd": "dora_wd", "factor": "lokr_factor", "full_matrix": "lokr_full_matrix",
    "decompose_both": "lokr_decompose_both",
}
LYCORIS_OPTION = "LyCORIS option not implemented in LoRA Kiln"
# sd-scripts' networks.lora options (network_args; kohya_ss keys of the same names), each a
# NetworkParams field of the same name; LoRA Kiln applies them to LoRA and LoCon only.
LORA_NETWORK_OPTIONS: tuple[str, ...] = (
    "rank_dropout", "module_dropout", "down_lr_weight", "mid_lr_weight", "up_lr_weight",
    "block_lr_zero_threshold", "block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas")

# Optimizer names as kohya_ss and sd-scripts spell them (case does not matter there either).
# "DAdaptation" is sd-scripts' old name; it builds DAdaptAdamPreprint, the first version of
# DAdaptAdam, so DAdaptAdam is the nearest we have (the caller warns).
OPTIMIZERS: dict[str, OptimizerType] = {
    "adamw": OptimizerType.ADAMW,
    "adamw8bit": OptimizerType.ADAMW8BIT,
    "prodigy": OptimizerType.PRODIGY,
    "dadaptadam": OptimizerType.DADAPT_ADAM,
    "dadaptation": OptimizerType.DADAPT_ADAM,
    "lion": OptimizerType.LION,
    "adafactor": OptimizerType.ADAFACTOR,
}

# sd-scripts builds each optimizer with the arguments given in optimizer_args and the
# optimizer's own defaults for the rest; where those differ from our schema's defaults, an
# imported config must take the optimizer's, or it would not train the same.
OPTIMIZER_OWN_DEFAULTS: dict[OptimizerType, dict[str, Any]] = {
    OptimizerType.PRODIGY: {"weight_decay": 0.0},
    OptimizerType.DADAPT_ADAM: {"weight_decay": 0.0, "decouple": False},
    OptimizerType.LION: {"weight_decay": 0.0, "betas": (0.9, 0.99)},
    OptimizerType.ADAFACTOR: {"weight_decay": 0.0},
}

# sd-scripts' Adafactor where it differs from LoRA Kiln's (relative_step, scale_parameter and
# warmup_init all False): relative_step=True unless optimizer_args say otherwise
# (train_util.get_optimizer), scale_parameter=True as transformers' default; warmup_init
# is False in both.
ADAFACTOR_SD_SCRIPTS_ARGS: dict[str, Any] = {"relative_step": True, "scale_parameter": True}

# sd-scripts' k-diffusion spellings of samplers we have under the plain name.
SAMPLER_ALIASES: dict[str, Sampler] = {"k_euler": Sampler.EULER, "k_euler_a": Sampler.EULER_A,
                                       "k_lms": Sampler.LMS}

# What sd-scripts uses when a config TOML leaves a key out, where that differs from our
# schema's default (a hand-written config relies on these).
SD_SCRIPTS_DEFAULTS: dict[str, Any] = {
    "optimizer_type": "AdamW", "learning_rate": 2e-6, "lr_scheduler": "constant",
    "mixed_precision": "no", "save_precision": "float", "network_dim": 4,
    "caption_extension": ".caption",
}

_REASON_GROUPS: dict[str, tuple[str, ...]] = {
    "SDXL option not implemented in LoRA Kiln (sdxl_train.py's block-wise rates)": ("block_lr",),
    "FLUX option": (
        "flux1_checkbox", "flux1_cache_text_encoder_outputs",
        "flux1_cache_text_encoder_outputs_to_disk", "ae", "clip_l", "t5xxl", "discrete_flow_shift",
        "model_prediction_type", "timestep_sampling", "split_mode", "train_blocks",
        "t5xxl_max_token_length", "guidance_scale", "mem_eff_save", "apply_t5_attn_mask", "split_qkv",
        # kohya_ss writes these into every config, FLUX.1 or not
        "single_mod_dim", "in_dims", "train_double_block_indices", "train_single_block_indices",
        "img_attn_dim", "img_mlp_dim", "img_mod_dim", "txt_attn_dim", "txt_mlp_dim", "txt_mod_dim",
        "single_dim", "blocks_to_swap", "single_blocks_to_swap", "double_blocks_to_swap",
        "blockwise_fused_optimizers", "flux_fused_backward_pass", "cpu_offload_checkpointing",
        "t5xxl_lr", "train_t5xxl", "enable_all_linear", "sigmoid_scale", "t5xxl_device", "t5xxl_dtype",
        "save_t5xxl", "save_clip"),
    "SD3 option": (
        "sd3_checkbox", "sd3_cache_text_encoder_outputs", "sd3_cache_text_encoder_outputs_to_disk",
        "sd3_fused_backward_pass", "clip_g", "clip_g_dropout_rate", "sd3_clip_l", "sd3_clip_l_dropout_rate",
        "sd3_disable_mmap_load_safetensors", "sd3_enable_scaled_pos_embed", "logit_mean", "logit_std",
        "mode_scale", "pos_emb_random_crop_rate", "sd3_t5_dropout_rate", "sd3_t5xxl",
        "sd3_text_encoder_batch_size", "weighting_scheme"),
    LYCORIS_OPTION: (
        "factor", "bypass_mode", "dora_wd", "full_matrix", "use_cp", "use_tucker", "use_scalar",
        "rank_dropout_scale", "constrain", "rescaled", "train_norm", "decompose_both",
        "train_on_input", "LyCORIS_preset", "unit", "preset", "block_size"),
    "network option not implemented in LoRA Kiln": (
        "dim_from_weights", "loraplus_lr_ratio",
        "loraplus_text_encoder_lr_ratio", "loraplus_unet_lr_ratio", "base_weights",
        "base_weights_multiplier", "network_multiplier"),
    "loss option not implemented in LoRA Kiln": (
        "loss_type", "huber_schedule", "huber_c",
        "scale_v_pred_loss_like_noise_pred", "v_pred_like_loss",
        "min_timestep", "max_timestep",
        "weighted_captions", "zero_terminal_snr"),
    "dataset option not implemented in LoRA Kiln": (
        "color_aug", "caption_dropout_every_n_epochs", "keep_tokens_separator",
        "secondary_separator", "enable_wildcard", "face_crop_aug_range", "token_warmup_min",
        "token_warmup_step", "metadata_file", "in_json", "dataset_repeats",
        "cache_info", "custom_attributes",
        "resize_interpolation", "debug_dataset"),
    "precision option not implemented in LoRA Kiln": ("full_fp16", "full_bf16"),
    "launcher setting (accelerate, several GPUs): LoRA Kiln trains in one process": (
        "num_processes", "num_machines", "multi_gpu", "gpu_ids", "extra_accelerate_launch_args",
        "ddp_timeout", "ddp_gradient_as_bucket_view", "ddp_static_graph"),
    "Hugging Face upload: LoRA Kiln works offline": ("resume_from_huggingface",),
    "metadata option not implemented in LoRA Kiln": (
        "metadata_author", "metadata_description", "metadata_license", "metadata_tags",
        "metadata_title"),
    "checkpoint option not implemented in LoRA Kiln": (
        "save_model_as", "save_last_n_steps", "save_last_n_steps_state", "save_last_n_epochs_state",
        "save_state_on_train_end", "save_n_epoch_ratio"),
    "schedule option not implemented in LoRA Kiln": (
        "lr_scheduler_args", "lr_scheduler_type", "lr_decay_steps", "lr_scheduler_timescale",
        "lr_scheduler_min_lr_ratio"),
    "sd-scripts state folders cannot be resumed; LoRA Kiln resumes its own runs": ("resume",),
    "extra command-line arguments are not read: check them by hand": ("additional_parameters",),
}
UNSUPPORTED: dict[str, str] = {key: reason for reason, keys in _REASON_GROUPS.items() for key in keys}

# Keys that change nothing in what is trained: the report lists them as ignored (no effect),
# not as options LoRA Kiln lacks.
_NO_EFFECT_GROUPS: dict[str, tuple[str, ...]] = {
    "kohya_ss GUI setting (no effect on training)": (
        "model_list", "training_preset", "save_as_bool", "api_name", "save_toml"),
    "memory or speed option, no effect on what is trained (LoRA Kiln chooses these itself)": (
        "highvram", "lowvram", "lowram", "persistent_data_loader_workers", "num_cpu_threads_per_process",
        "main_process_port", "dynamo_backend", "dynamo_mode", "dynamo_use_fullgraph", "dynamo_use_dynamic",
        "disable_mmap_load_safetensors"),
    "experiment-tracker setting, no effect on training (LoRA Kiln logs to its run folder and TensorBoard)": (
        "wandb_api_key", "wandb_run_name", "log_tracker_name", "log_tracker_config", "log_config",
        "use_wandb", "log_prefix"),
    "Hugging Face upload, no effect on training (LoRA Kiln works offline)": (
        "huggingface_repo_id", "huggingface_token", "huggingface_repo_type", "huggingface_repo_visibility",
        "huggingface_path_in_repo", "save_state_to_huggingface", "async_upload"),
}
NO_EFFECT: dict[str, str] = {key: reason for reason, keys in _NO_EFFECT_GROUPS.items() for key in keys}

# Values that mean "off" although they are not empty: kohya_ss's and sd-scripts' defaults.
OFF_VALUES: dict[str, Any] = {
    "loss_type": "l2", "huber_schedule": "snr", "huber_c": 0.1, "max_timestep": 1000,
    "save_model_as": "safetensors", "LyCORIS_preset": "full", "preset": "full", "factor": -1,
    "unit": 1, "train_on_input": True, "dynamo_backend": "no", "dynamo_mode": "default",
    "num_machines": 1, "num_processes": 1, "num_cpu_threads_per_process": 2,
    "model_list": "custom", "training_preset": "none", "algo": "lora", "dataset_repeats": 1,
}


def _lycoris(raw: Mapping[str, Any]) -> bool:
    return str(raw.get("LoRA_type", "")).lower().startswith(("lycoris", "locon"))


# Keys that only matter when another key enables them: (test on the whole file, why not).
_CONDITIONS: tuple[tuple[tuple[str, ...], Callable[[Mapping[str, Any]], bool], str], ...] = (
    (_REASON_GROUPS[LYCORIS_OPTION], _lycoris,
     "only used by LyCORIS network types"),
    (("huber_c", "huber_schedule"), lambda raw: str(raw.get("loss_type", "l2")).lower() != "l2",
     "only used with the huber or smooth_l1 loss"),
    (_REASON_GROUPS["FLUX option"][1:], lambda raw: raw.get("flux1_checkbox") is True,
     "a kohya_ss FLUX.1 field, only used for FLUX.1 models"),
    (_REASON_GROUPS["SD3 option"][1:], lambda raw: raw.get("sd3_checkbox") is True,
     "a kohya_ss SD3 field, only used for SD3 models"),
    (("dynamo_mode", "dynamo_use_fullgraph", "dynamo_use_dynamic"),
     lambda raw: str(raw.get("dynamo_backend", "no")).lower() != "no", "only used with a dynamo backend"),
    (("wandb_api_key", "wandb_run_name"),
     lambda raw: "wandb" in str(raw.get("log_with", "")) or raw.get("use_wandb") is True,
     "only used when logging to wandb"),
)
CONDITIONS: dict[str, tuple[Callable[[Mapping[str, Any]], bool], str]] = {
    key: (test, why) for keys, test, why in _CONDITIONS for key in keys}


def is_off(value: Any) -> bool:
    """True for values that mean "not set" or "off": "", 0, false, "none", empty lists."""
    if value is None:
        return True
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value == 0
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "none", "false"):
            return True
        try:
            return float(text) == 0
        except ValueError:
            return False
    if isinstance(value, (list, tuple, dict)):
        return len(value) == 0
    return False


def same_value(value: Any, other: Any) -> bool:
    """Equal as Kohya's files mean it: "75" == 75, "True" == True, "Original" == "original"."""
    for kind in (bool, float):
        try:
            return loosen(value, kind) == loosen(other, kind)
        except (TypeError, ValueError):
            continue
    return str(value).strip().lower() == str(other).strip().lower()


def classify_other(key: str, value: Any, raw: Mapping[str, Any]) -> tuple[bool, str]:
    """(unsupported?, reason) for a key that maps to no field."""
    if is_off(value):
        return False, OFF
    if key in OFF_VALUES and same_value(value, OFF_VALUES[key]):
        return False, "Kohya's default (off)"
    if key in NO_EFFECT:
        return False, NO_EFFECT[key]
    if key in CONDITIONS:
        test, why = CONDITIONS[key]
        if not test(raw):
            return False, why
    return True, UNSUPPORTED.get(key, "not an option LoRA Kiln knows (nor kohya_ss's or sd-scripts' LoRA options)")


def loosen(value: Any, tp: Any) -> Any:
    """Kohya's spellings of ``value`` made into ``tp`` where they are unambiguous.

    kohya_ss JSON often holds numbers as text ("0.0001", "8") and older files booleans as
    "True"/"False"; sd-scripts' persistent_data_loader_workers is 0/1. Anything else is
    returned unchanged so that coerce_value reports it with the field's name.
    """
    tp = optional_inner(tp)
    if tp is bool:
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
            return bool(value)
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not true or false")
        return value
    if tp in (int, float) and isinstance(value, str):
        number = float(value.strip())
        if tp is int and number.is_integer():
            return int(number)
        return number
    if tp in (int, float) and isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    if tp in (int, float):
        return float(value) if tp is float else value
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if typing.get_origin(tp) is tuple and isinstance(value, str):
        parts = [float(part) if "." in part else int(part)
                 for part in value.strip().strip("()[]").split(",") if part.strip()]
        return parts[0] if len(parts) == 1 else parts  # "512" is 512 x 512, as in Kohya
    if isinstance(tp, type) and issubclass(tp, enum.Enum) and not isinstance(value, str):
        raise ValueError(f"{value!r} is not one of the choices")
    return value


def split_args(value: Any) -> list[str]:
    """``"a=1 b=2,3"`` (kohya_ss) or ``["a=1", "b=2,3"]`` (sd-scripts) -> ``["a=1", "b=2,3"]``.

    kohya_ss splits on spaces; a space after a comma ("betas=0.9, 0.99") is kept inside
    the value by splitting only where the next word is a new ``name=``.
    """
    if isinstance(value, str):
        text = value.replace('"', "").strip()
        return [part for part in re.split(r"\s+(?=[A-Za-z_][\w.]*=)", text) if part] if text else []
    if isinstance(value, (list, tuple)):
        return [str(item).replace('"', "").strip() for item in value if str(item).strip()]
    raise ValueError(f"expected key=value text or a list of them, got {value!r}")


def parse_arg(text: str) -> tuple[str, Any]:
    """One ``name=value``; the value read as a Python literal as sd-scripts reads it."""
    if "=" not in text:
        raise ValueError(f"'{text}' is not name=value")
    name, raw = (part.strip() for part in text.split("=", 1))
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # sd-scripts keeps what is not a literal as text, e.g. "inf" or "cosine"
    if isinstance(value, str) and value.lower() in ("inf", "+inf", "infinity"):
        value = math.inf
    return name, value
