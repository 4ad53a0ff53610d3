"""Validation of a whole configuration: ranges, contradictions and missing paths.

Returns problems as :class:`Problem` (field path, message, severity). The GUI marks the
fields, the CLI prints the list, and training does not start while any error remains.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from core.data.buckets import BucketError, adjusted_limits
from core.config.schema import (DEMO_MODEL, GROUPS, MAX_TOKEN_LENGTHS, Duration, LatentCache, MixedPrecision,
                          NetworkParams, NetworkType, OptimizerType, SavePrecision, Scheduler, TextEncoderCache,
                          TrainConfig, TrainingParams, text_encoder_lrs, trained_text_encoders)
from core.models.checkpoint_files import SINGLE_FILE_SUFFIXES, ModelLoadError
from core.models.blocks import UnetBlocks
from core.models.family import UnsupportedFamily, families, family_for, family_named
from core.config.optimizer_support import unavailable_message
from core.system.paths import default_runs_dir
from core.config.params import param_specs, range_problem
from core.data.plan import bucket_settings
from core.config.prompts import PromptError, parse_prompts
from core.system.resources import is_builtin, resolve_builtin
from core.system.words import count

ERROR = "error"
WARNING = "warning"

MODEL_SUFFIXES = SINGLE_FILE_SUFFIXES  # what the file dialogs offer
_BAD_NAME = re.compile(r'[\\/:*?"<>|\x00-\x1f]')


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    severity: str = ERROR

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == ERROR]


def _ranges(config: TrainConfig) -> list[Problem]:
    found = []
    for group in GROUPS:
        obj = getattr(config, group)
        items = [(group, obj)] + [(f"{group}.subsets[{i}]", s) for i, s in enumerate(getattr(obj, "subsets", []))]
        for prefix, target in items:
            for spec in param_specs(type(target)):
                value = getattr(target, spec.name)
                if value is None or spec.name == "subsets":
                    continue
                message = range_problem(value, spec.info)
                if message:
                    found.append(Problem(f"{prefix}.{spec.name}", message))
    return found


def _existing(value: str) -> Path:
    return resolve_builtin(value) if is_builtin(value) else Path(value).expanduser()


def _check_paths(config: TrainConfig, total_steps: int | None) -> list[Problem]:
    found = []
    model = config.model.base_model
    if not model:
        found.append(Problem("model.base_model", _choose_base_model(config.model.family)))
    elif not any(family.claims(model) for family in families()):
        path = _existing(model)
        if not path.exists():
            kinds = " or ".join(family.label for family in families())
            found.append(Problem("model.base_model", f"'{model}' does not exist; choose a checkpoint file or "
                                                     f"diffusers folder of a model LoRA Kiln trains ({kinds})"))
        else:
            message = _base_model_problem(str(path.resolve()), *_stamp(path), config.model.family)
            if message:
                found.append(Problem("model.base_model", message))
    for field_path, value, want_dir in (
        ("model.vae", config.model.vae, None),
        ("network.init_weights", config.network.init_weights, False),
    ):
        if value:
            found += _path_problem(field_path, value, want_dir)
    for i, subset in enumerate(config.dataset.subsets):
        if not subset.image_dir:
            found.append(Problem(f"dataset.subsets[{i}].image_dir", "choose the subset's image folder"))
        else:
            found += _path_problem(f"dataset.subsets[{i}].image_dir", subset.image_dir, True)
    if config.dataset.validation_dir:
        found += _path_problem("dataset.validation_dir", config.dataset.validation_dir, True)
    return found + _mask_problems(config) + _split_problems(config) + _output_problems(config, total_steps)


def _split_problems(config: TrainConfig) -> list[Problem]:
    """A validation split that holds no image out of folders this small (it rounds per folder)."""
    from core.data.imageinfo import is_image_file
    from core.data.validation_split import empty_split_message

    data = config.dataset
    if data.validation_split <= 0 or data.validation_dir:
        return []
    sizes = []
    for subset in data.subsets:
        if subset.is_reg or not subset.image_dir:
            continue
        root = _existing(subset.image_dir)
        try:  # in Kohya layout each N_name sub-folder is a subset, split on its own
            folders = [p for p in root.iterdir() if p.is_dir()] if subset.kohya_layout else [root]
            sizes += [sum(1 for p in f.iterdir() if p.is_file() and is_image_file(p)) for f in folders]
        except OSError:  # a missing folder is named by its own check
            return []
    message = empty_split_message(sizes, data.validation_split)
    return [Problem("dataset.validation_split", message, WARNING)] if message else []


def _mask_problems(config: TrainConfig) -> list[Problem]:
    """A mask folder that is missing, unused, or lacks some images' masks (named). Masks of
    the wrong size are found when their images load; reading every mask's header here would
    slow every check of the form."""
    from core.data.masks import missing_masks, missing_masks_message
    from core.data.imageinfo import is_image_file

    found = []
    for i, subset in enumerate(config.dataset.subsets):
        field_path = f"dataset.subsets[{i}].mask_dir"
        if not subset.mask_dir:
            if config.dataset.masked_loss and not subset.alpha_mask:
                found.append(Problem(field_path, "masked loss is on but this folder has no mask folder (and "
                                                 "no alpha mask): its images train everywhere", WARNING))
            continue
        if not config.dataset.masked_loss:
            found.append(Problem(field_path, "a mask folder is set but masked loss is off, so it is not "
                                             "used; turn on dataset.masked_loss to use it", WARNING))
            continue
        problems = _path_problem(field_path, subset.mask_dir, True)
        if problems or subset.kohya_layout or not subset.image_dir:
            found += problems
            continue
        folder = _existing(subset.image_dir)
        try:
            images = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
        except OSError:
            continue
        missing = missing_masks(images, _existing(subset.mask_dir))
        if missing:
            found.append(Problem(field_path, missing_masks_message(missing, subset.mask_dir)))
    return found


def _choose_base_model(family_setting: str) -> str:
    """What to choose for an empty base model: a model of the set family (a preset for SDXL
    names no model, and the SD 1.x demo model would not fit it)."""
    try:
        family = family_named(family_setting)
    except UnsupportedFamily:
        return f"choose a base model: a .safetensors/.ckpt file, a diffusers folder, or {DEMO_MODEL}"
    built_in = ", or " + " or ".join(family.built_in_models()) if family.built_in_models() else ""
    return (f"choose a base model of the {family.label} family (model.family = {family.name}): "
            f"a .safetensors/.ckpt file or a diffusers folder{built_in}")


def _stamp(path: Path) -> tuple[int, int]:
    try:
        info = path.stat()
    except OSError:
        return 0, 0
    return info.st_size, info.st_mtime_ns


@lru_cache(maxsize=32)
def _base_model_problem(path: str, size: int, mtime_ns: int, family_setting: str) -> str | None:
    """Why the model at ``path`` cannot be trained on, from its header alone; cached by
    size and time so the form, which validates after every edit, reads a file once."""
    try:
        family = family_for(path, family_setting)
    except UnsupportedFamily:
        return None  # said on model.family
    try:
        family.check_model_file(path)
    except ModelLoadError as error:
        return str(error)
    except OSError as error:
        return f"'{path}' cannot be read ({error.strerror or error})"
    return None


# ---------------------------------------------------------------- the output folder

STATE_BYTES_PER_WEIGHT = 20  # fp32 weights and up to four fp32 optimizer buffers (Prodigy)
STATES_KEPT = 3  # two are kept, and a third exists while it is written
LOG_BYTES = 16 * 2**20  # metrics, log, plan, config, TensorBoard events
LOW_SPACE = 2**30  # less than this left after the run is worth a warning


def estimate_output_bytes(config: TrainConfig, total_steps: int | None = None) -> tuple[int, str]:
    """(bytes, how they add up): a generous estimate of what one run writes to its folder.
    Raises UnsupportedFamily for a model family LoRA Kiln cannot train."""
    net, out, train, sample = config.network, config.output, config.training, config.sampling
    weights = family_for(config.model.base_model, config.model.family).lora_weights(net)
    lora = weights * (4 if out.save_precision is SavePrecision.FLOAT else 2)
    steps = total_steps if total_steps is not None else \
        train.max_train_steps if train.duration is Duration.STEPS else None
    epochs = train.max_train_epochs if train.duration is Duration.EPOCHS else None
    saves = (steps - 1) // out.save_every_n_steps if steps and out.save_every_n_steps else 0
    saves += (epochs - 1) // out.save_every_n_epochs if epochs and out.save_every_n_epochs else 0
    if out.keep_last_n:
        saves = min(saves, out.keep_last_n + 1)  # pruned after each save
    total = (saves + 1) * lora + LOG_BYTES
    parts = f"{count(saves + 1, 'LoRA file')} of {_size(lora)}"
    if out.save_state or saves:
        total += STATES_KEPT * weights * STATE_BYTES_PER_WEIGHT
        parts += f", training state up to {_size(STATES_KEPT * weights * STATE_BYTES_PER_WEIGHT)}"
    prompts = sum(1 for line in sample.prompts.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    rounds = (steps // sample.every_n_steps if steps and sample.every_n_steps else 0) + \
        (epochs // sample.every_n_epochs if epochs and sample.every_n_epochs else 0) + int(sample.at_step_0)
    if prompts and rounds:
        images = prompts * rounds * sample.width * sample.height * 3 // 2  # PNG at about half of raw
        total += images
        parts += f", samples about {_size(images)}"
    return total, parts


def _size(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return ""


def _output_problems(config: TrainConfig, total_steps: int | None) -> list[Problem]:
    """The run folder's parent must be a folder that can be created, written, and hold the run."""
    out_dir = config.output.output_dir
    path = Path(out_dir).expanduser() if out_dir else default_runs_dir()
    shown = f"'{out_dir}'" if out_dir else f"LoRA Kiln's runs folder ({path})"
    problem = lambda message, severity=ERROR: [Problem("output.output_dir", message, severity)]  # noqa: E731
    if path.exists() and not path.is_dir():
        return problem(f"{shown} is a file, not a folder; choose a folder")
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return problem(f"{shown} cannot be created: '{probe}' is a file; choose another folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        verb = "is not writable" if probe == path else f"cannot be created ('{probe}' is not writable)"
        return problem(f"{shown} {verb}; choose another folder")
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return []  # the run itself will say what is wrong with the disk
    try:
        need, parts = estimate_output_bytes(config, total_steps)
    except UnsupportedFamily:  # said on model.family
        return []
    if free < need:
        return problem(f"only {_size(free)} free for {shown}; this run writes about {_size(need)} "
                       f"({parts}); free some space or choose a folder on another disk")
    if free - need < LOW_SPACE:
        return problem(f"disk space is low: {_size(free)} free for {shown}, and this run writes about "
                       f"{_size(need)}", WARNING)
    return []


def _path_problem(field_path: str, value: str, want_dir: bool | None) -> list[Problem]:
    path = _existing(value)
    if not path.exists():
        return [Problem(field_path, f"'{value}' does not exist")]
    if want_dir is True and not path.is_dir():
        return [Problem(field_path, f"'{value}' is a file; choose a folder")]
    if want_dir is False and not path.is_file():
        return [Problem(field_path, f"'{value}' is a folder; choose a file")]
    return []


def _other_family_fields(config: TrainConfig, family: str) -> list[Problem]:
    """Fields of another model family (SDXL's second text encoder, say) changed from their
    default: harmless, but the user probably expects them to act."""
    found = []
    for group in GROUPS:
        obj = getattr(config, group)
        for spec in param_specs(type(obj)):
            if not spec.info.applies_to(family) and getattr(obj, spec.name) != spec.default:
                names = " or ".join(f.upper() if f == "sdxl" else f for f in spec.info.families)
                found.append(Problem(f"{group}.{spec.name}", f"only used for {names} models; this one is "
                                                             f"{family}, so it has no effect", WARNING))
    return found


def _lycoris_problems(net: NetworkParams) -> list[Problem]:
    """The LyCORIS options that cannot be combined with the chosen network type."""
    found: list[Problem] = []
    if net.dora_wd and net.type is NetworkType.IA3:
        found.append(Problem("network.dora_wd", "IA3 has no weight update to decompose: turn DoRA off or "
                                                "choose LoRA, LoCon, LoHa or LoKr", ERROR))
    if net.dropout > 0 and (net.type.is_lycoris or net.dora_wd):
        found.append(Problem("network.dropout", "LoHa, LoKr, IA3 and DoRA have no hidden activations to drop "
                                                "out (LyCORIS ignores it too); set dropout to 0", ERROR))
    if net.lokr_factor == 0:
        found.append(Problem("network.lokr_factor", "a factor of 0 splits nothing: use -1 (as square as "
                                                    "possible) or a positive factor", ERROR))
    lokr_fields = {"lokr_factor": -1, "lokr_full_matrix": False, "lokr_decompose_both": False}
    if net.type is not NetworkType.LOKR:
        for name, default in lokr_fields.items():
            if getattr(net, name) != default:
                found.append(Problem(f"network.{name}", "only used by LoKr", WARNING))
    return found


def _network_dropout_and_block_problems(net: NetworkParams) -> list[Problem]:
    """Rank/module dropout and the per-block settings are sd-scripts' networks.lora options: LoRA
    and LoCon only (LyCORIS reads none of the block ones; LoRA Kiln's LoHa, LoKr, IA3 and DoRA
    modules have no rank to drop)."""
    from core.models.blocks import DIM_FIELDS, LR_WEIGHT_FIELDS

    found: list[Problem] = []
    if net.type.is_lycoris or net.dora_wd:
        kind = "DoRA" if net.dora_wd and not net.type.is_lycoris else net.type.value
        for name in ("rank_dropout", "module_dropout"):
            if getattr(net, name) > 0:
                found.append(Problem(f"network.{name}", f"applies to LoRA and LoCon only (this network is {kind}); "
                                                        "set it to 0", ERROR))
        for name in LR_WEIGHT_FIELDS + DIM_FIELDS:
            if getattr(net, name).strip():
                found.append(Problem(f"network.{name}", f"per-block settings apply to LoRA and LoCon only (sd-scripts' "
                                                        f"networks.lora; this network is {kind}): clear it", ERROR))
    elif (net.conv_block_dims.strip() or net.conv_block_alphas.strip()) and not net.type.has_conv:
        for name in ("conv_block_dims", "conv_block_alphas"):
            if getattr(net, name).strip():
                found.append(Problem(f"network.{name}", "sets the 3x3 convolutions' ranks, which only LoCon trains: "
                                                        "choose LoCon or clear it", ERROR))
    weighted = any(getattr(net, name).strip() for name in LR_WEIGHT_FIELDS)
    if not weighted and not net.block_dims.strip():
        # sd-scripts reads the other block lists only together with block_dims or block LR weights.
        for name in ("block_alphas", "conv_block_dims", "conv_block_alphas"):
            if getattr(net, name).strip():
                found.append(Problem(f"network.{name}", "has no effect without block dims or block LR weights "
                                                        "(as in sd-scripts): set block dims too", WARNING))
    if net.block_lr_zero_threshold and not weighted:
        found.append(Problem("network.block_lr_zero_threshold", "has no effect without down/mid/up LR weights",
                             WARNING))
    return found


def _block_problems(net: NetworkParams, blocks: UnetBlocks) -> list[Problem]:
    """Per-block lists that do not fit this family's U-Net (counts, presets, numbers)."""
    from core.models.blocks import block_problems

    return [Problem(f"network.{err.field}", err.problem, ERROR) for err in block_problems(net, blocks)]


def _noise_problems(train: TrainingParams, net: NetworkParams) -> list[Problem]:
    """The combinations of noise and loss options that sd-scripts refuses or that do nothing."""
    found: list[Problem] = []
    if train.adaptive_noise_scale and not train.noise_offset:
        found.append(Problem("training.adaptive_noise_scale", "it scales the noise offset, which is 0: set a noise "
                                                              "offset (e.g. 0.05) or set this to 0", ERROR))
    if train.multires_noise_iterations and train.noise_offset:
        # sd-scripts applies both (offset first); its older versions refused the pair.
        found.append(Problem("training.multires_noise_iterations",
                             "multires noise rescales the noise after the noise offset is added, which "
                             "mostly washes the offset out (older sd-scripts refused the pair): usually "
                             "one of them is set to 0", WARNING))
    if train.noise_offset_random_strength and not train.noise_offset:
        found.append(Problem("training.noise_offset_random_strength",
                             "has no effect while the noise offset is 0", WARNING))
    if train.ip_noise_gamma_random_strength and not train.ip_noise_gamma:
        found.append(Problem("training.ip_noise_gamma_random_strength",
                             "has no effect while input perturbation noise is 0", WARNING))
    if net.scale_weight_norms and (net.type.is_lycoris or net.dora_wd):
        found.append(Problem("network.scale_weight_norms", "LoRA Kiln applies max-norm regularisation to LoRA "
                                                           "and LoCon only: set it to 0 for LoHa, LoKr, IA3 "
                                                           "and DoRA", ERROR))
    return found


def _text_encoder_cache_problems(config: TrainConfig, text_encoders: tuple[str, ...]) -> list[Problem]:
    """A disk cache of text-encoder outputs is asked for explicitly, so what prevents it is an
    error, as sd-scripts' cache_text_encoder_outputs asserts (the memory cache is 'when possible')."""
    if config.dataset.text_encoder_cache is not TextEncoderCache.DISK:
        return []
    found = []
    if text_encoders:
        found.append(Problem("dataset.text_encoder_cache", "text-encoder outputs cannot be cached while a "
                                                           "text encoder trains: turn off network.train_text_encoder "
                                                           "(U-Net only) or set the cache to memory or off"))
    for i, subset in enumerate(config.dataset.subsets):  # placement.caption_is_fixed, without torch
        options = [name for name, on in (("shuffle_caption", subset.shuffle_caption),
                                         ("caption_dropout_rate", subset.caption_dropout_rate > 0),
                                         ("caption_tag_dropout_rate", subset.caption_tag_dropout_rate > 0)) if on]
        if options:
            found.append(Problem(f"dataset.subsets[{i}].{options[0]}",
                                 f"{', '.join(options)} change the caption every epoch, so its text-encoder "
                                 "outputs cannot be cached on disk; turn them off or set "
                                 "dataset.text_encoder_cache to memory or off"))
    return found


def _fp8_problems(config: TrainConfig) -> list[Problem]:
    """fp8 base weights are cast up to the mixed precision to compute, so sd-scripts refuses
    them without one; its fp8_base_unet overrides fp8_base for the text encoders."""
    model, precision = config.model, config.training.mixed_precision
    if not (model.fp8_base or model.fp8_base_unet):
        return []
    found = []
    if precision is MixedPrecision.NO:
        found.append(Problem("model.fp8_base" if model.fp8_base else "model.fp8_base_unet",
                             "fp8 base weights need training.mixed_precision fp16 or bf16 (as sd-scripts): "
                             "each layer casts its fp8 weights up to that precision to compute; choose one, "
                             "or turn fp8 off"))
    if model.fp8_base and model.fp8_base_unet:
        found.append(Problem("model.fp8_base", "'fp8 for the U-Net only' is on too, so the text encoders keep the "
                                               "training precision and only the U-Net is in fp8 (as sd-scripts); "
                                               "turn one of the two off", WARNING))
    return found


def _validation_loss_problems(config: TrainConfig) -> list[Problem]:
    data, train = config.dataset, config.training
    found = []
    wanted = data.validation_split > 0 or bool(data.validation_dir)
    if data.validation_split > 0 and data.validation_dir:
        found.append(Problem("dataset.validation_split", "a validation folder is set, so nothing is split off: "
                                                         "set the split to 0, or clear the validation folder",
                             WARNING))
    if not wanted:
        for name in ("validate_every_n_steps", "max_validation_steps"):
            if getattr(train, name):
                found.append(Problem(f"training.{name}", "there is no validation set: set a validation split "
                                                         "or a validation folder", WARNING))
    elif not train.validate_every_n_steps and not train.validate_every_n_epochs:
        found.append(Problem("training.validate_every_n_epochs", "the validation loss is never computed: set "
                                                                 "it every N steps or every N epochs", WARNING))
    return found


def _contradictions(config: TrainConfig, total_steps: int | None) -> list[Problem]:
    found: list[Problem] = []
    add = lambda path, message, severity=ERROR: found.append(Problem(path, message, severity))  # noqa: E731
    model, data, net, opt = config.model, config.dataset, config.network, config.optimizer
    sched, train, out, sample = config.schedule, config.training, config.output, config.sampling

    try:
        family = family_for(model.base_model, model.family)
    except UnsupportedFamily as error:
        add("model.family", str(error))
        family_name, encoder_names = str(model.family), ("text_encoder",)
    else:
        family_name, encoder_names = family.name, family.text_encoder_names
        found += _block_problems(net, family.unet_blocks)
        if model.clip_skip > 1 and not family.clip_skip_applies:
            add("model.clip_skip", f"{family.label} always uses the text encoders' penultimate layer (as "
                                   "sd-scripts does), so clip skip has no effect; leave it at 1", WARNING)
    found += _other_family_fields(config, family_name)
    text_encoders = trained_text_encoders(net, encoder_names)
    if not data.subsets:
        add("dataset.subsets", "no images: add an image folder")
    elif all(s.is_reg for s in data.subsets):
        add("dataset.subsets", "every image folder is marked as regularisation; at least one must "
                               "hold training images")

    if train.max_token_length not in MAX_TOKEN_LENGTHS:
        add("training.max_token_length", f"{train.max_token_length} is not allowed; choose "
                                         + ", ".join(str(n) for n in MAX_TOKEN_LENGTHS))
    width, height = data.resolution
    step = data.bucket_reso_steps
    if step % 8:
        add("dataset.bucket_reso_steps", f"{step} is not a multiple of 8 (the VAE works in 8-pixel blocks)")
    if data.enable_bucket:
        try:
            adjusted_limits(bucket_settings(data))  # sd-scripts' checks, also in no-upscale mode
        except BucketError as err:
            add(f"dataset.{err.field}", str(err))
    elif width % 8 or height % 8:
        add("dataset.resolution", f"{width}x{height}: without buckets both sides must be multiples of 8")
    if data.latent_cache is not LatentCache.OFF:
        for i, s in enumerate(data.subsets):
            if s.random_crop:
                add(f"dataset.subsets[{i}].random_crop", "random crop cannot be used with a latent cache "
                                                         "(the crop is baked into the cached latent); "
                                                         "turn one of them off")
    for i, s in enumerate(data.subsets):
        if s.keep_tokens and not s.shuffle_caption:
            add(f"dataset.subsets[{i}].keep_tokens", "has no effect unless shuffle caption is on", WARNING)

    if not net.train_unet and not text_encoders:
        add("network.train_unet", "nothing to train: turn on the U-Net, the text encoder, or both")
    elif net.train_text_encoder and not text_encoders:
        add("network.train_text_encoder", "both text encoders are switched off (train text encoder 1 "
                                          "and 2), so only the U-Net trains", WARNING)
    found += _text_encoder_cache_problems(config, text_encoders)
    found += _fp8_problems(config)
    if not net.type.has_conv and (net.conv_dim != 1 or net.conv_alpha != 1.0):
        add("network.conv_dim", "conv dim and conv alpha are only used by LoCon, LoHa and LoKr", WARNING)
    found += _lycoris_problems(net)
    found += _noise_problems(train, net)
    found += _network_dropout_and_block_problems(net)
    if net.alpha > net.dim and net.type is not NetworkType.IA3:
        add("network.alpha", f"alpha {net.alpha:g} above dim {net.dim} amplifies the LoRA "
                             f"{net.alpha / net.dim:g}x; this is rarely intended", WARNING)

    missing = unavailable_message(opt.type)
    if missing:
        add("optimizer.type", missing)
    if opt.type.adapts_lr:
        for field_name in ("learning_rate", "unet_lr", "text_encoder_lr", "text_encoder_2_lr"):
            value = getattr(opt, field_name)
            if value is not None and 0 < value < 0.1:
                add(f"optimizer.{field_name}", f"{opt.type.value} finds its own step size; its learning "
                                               f"rate is a multiplier, usually 1.0 (not {value:g})", WARNING)
    unet_lr = opt.learning_rate if opt.unet_lr is None else opt.unet_lr
    encoder_lrs = {name: rate for name, rate in text_encoder_lrs(opt, encoder_names).items()
                   if name in text_encoders}
    if opt.type.adapts_lr:
        named = ([("the U-Net", "optimizer.unet_lr", unet_lr)] if net.train_unet else []) + [
            (f"text encoder {i + 1}" if len(encoder_names) > 1 else "the text encoder",
             "optimizer.text_encoder_2_lr" if i == 1 else "optimizer.text_encoder_lr", encoder_lrs[name])
            for i, name in enumerate(encoder_names) if name in encoder_lrs]
        used = [item for item in named if item[2] != 0]
        if len({rate for _, _, rate in used}) > 1:
            add(used[-1][1], f"{opt.type.value} needs one learning rate for everything it trains (or 0 to "
                             "freeze a part); got " + ", ".join(f"{what} {rate:g}" for what, _, rate in used))
    rates = ([unet_lr] if net.train_unet else []) + list(encoder_lrs.values())
    if rates and all(r == 0 for r in rates):
        add("optimizer.learning_rate", "every learning rate is 0: nothing would change")
    if opt.type is not OptimizerType.PRODIGY and opt.type is not OptimizerType.DADAPT_ADAM and opt.growth_rate != float("inf"):
        add("optimizer.growth_rate", "only Prodigy and DAdaptAdam use the growth rate", WARNING)

    if sched.warmup_steps and sched.warmup_ratio:
        add("schedule.warmup_steps", "set either warmup steps or warmup ratio, not both")
    if total_steps is None and train.duration is Duration.STEPS:
        total_steps = train.max_train_steps
    if total_steps is not None:
        warmup = sched.warmup_steps or int(sched.warmup_ratio * total_steps)
        if warmup >= total_steps:
            add("schedule.warmup_steps", f"warmup ({warmup} steps) is not shorter than training "
                                         f"({total_steps} steps)")
    if sched.scheduler is Scheduler.CONSTANT and (sched.warmup_steps or sched.warmup_ratio):
        add("schedule.scheduler", "'constant' ignores warmup; use 'constant_with_warmup'", WARNING)

    if not out.output_name.strip():
        add("output.output_name", "give the LoRA a file name")
    elif _BAD_NAME.search(out.output_name) or out.output_name.strip() in (".", ".."):
        add("output.output_name", f"'{out.output_name}' cannot be a file name "
                                  "(no / \\ : * ? \" < > | characters)")
    else:
        name_problem = _file_name_problem(out.output_name, total_steps)
        if name_problem:
            add("output.output_name", name_problem)
    if (sample.every_n_steps or sample.every_n_epochs or sample.at_step_0) and not _has_prompt(sample.prompts):
        add("sampling.prompts", "sampling is turned on but there is no prompt")
    try:  # checked now, not at the first sample hours into the run
        parse_prompts(sample.prompts, sample)
    except PromptError as error:
        add("sampling.prompts", f"{error}; fix that line")
    return found


# The longest name a run writes from output.output_name is the temporary file of a step
# checkpoint while it is written: ".<name>-step00000500.safetensors.<8 random>.tmp"
# (core.training.checkpoint.checkpoint_name, core.system.atomic.write_bytes_atomic). File systems
# allow 255 bytes (UTF-8) per name.
MAX_FILE_NAME_BYTES = 255
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\.|$)", re.IGNORECASE)


def longest_written_name_bytes(output_name: str, total_steps: int | None = None) -> int:
    digits = max(8, len(str(total_steps or 0)))
    return len(f".{output_name}-step{'0' * digits}.safetensors.{'x' * 8}.tmp".encode("utf-8"))


def _file_name_problem(name: str, total_steps: int | None) -> str | None:
    longest = longest_written_name_bytes(name, total_steps)
    if longest > MAX_FILE_NAME_BYTES:
        allowed = len(name.encode("utf-8")) - (longest - MAX_FILE_NAME_BYTES)
        return (f"the name is too long for the files a run writes: checkpoints add up to "
                f"{longest - len(name.encode('utf-8'))} bytes to it and a file name may have "
                f"{MAX_FILE_NAME_BYTES}; shorten it to at most {allowed} bytes (now "
                f"{len(name.encode('utf-8'))})")
    if name != name.rstrip(" .") or _WINDOWS_RESERVED.match(name):
        return f"'{name}' cannot be a file name on Windows (a reserved name, or a trailing dot or space)"
    return None


def _has_prompt(text: str) -> bool:
    return any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines())


def validate(config: TrainConfig, *, check_paths: bool = True, total_steps: int | None = None) -> list[Problem]:
    """Every problem with ``config``; errors first. ``total_steps`` (from the bucket plan)
    enables the checks that need the length of training when it is counted in epochs."""
    found = _ranges(config) + _contradictions(config, total_steps) + _validation_loss_problems(config)
    if check_paths:
        found += _check_paths(config, total_steps)
    return sorted(found, key=lambda p: p.severity != ERROR)
