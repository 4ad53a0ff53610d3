"""Smaller special cases of a Kohya import: training length, warmup, attention, caching,
logging, sample prompts and a few values that Kohya spells its own way.

Each handler exists because kohya_ss or sd-scripts give the key a meaning beyond "this
value into that field"; the comment on each says which.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.kohya import import_keys as keys
from core.config.schema import Attention, Duration, LatentCache, ModelFamily
from core.kohya.import_common import KOHYA_SS
from core.config.params import spec_for
from core.system.safe_read import FileRefused, KiB, decode_text, read_regular_bytes, size_text
from core.system.words import count as count_of

if TYPE_CHECKING:  # pragma: no cover - typing only
    from core.kohya.import_common import ImportContext

# A prompt file holds a line per sample image, a few KiB; 256 KiB is a thousand prompts or
# more, and a file larger than that is not the prompt file the config meant.
MAX_PROMPT_FILE_BYTES = 256 * KiB


def set_field(ctx: ImportContext, obj: Any, name: str, raw: Any, path: str) -> str | None:
    return ctx.set(obj, spec_for(type(obj), name), raw, path)


def number(ctx: ImportContext, name: str) -> float | None:
    """The argument as a number; None (and reported) when absent, empty or not a number."""
    if not ctx.has(name):
        return None
    raw = ctx.value(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        ctx.arg_ignored(name, "empty: LoRA Kiln's default applies")
        return None
    try:
        value = float(keys.loosen(raw, float))
    except (TypeError, ValueError, OverflowError):
        ctx.arg_unsupported(name, f"{_short(raw)} is not a number")
        return None
    if not math.isfinite(value):  # none of these counts can be infinite (or NaN)
        ctx.arg_unsupported(name, f"{_short(raw)} is not a finite number")
        return None
    return value


def _short(raw: Any) -> str:
    """A value as a message shows it: a file may hold a list of thousands of items."""
    text = repr(raw)
    return text if len(text) <= 60 else text[:57] + "..."


def flag(ctx: ImportContext, name: str) -> bool | None:
    try:
        return bool(keys.loosen(ctx.value(name), bool))
    except ValueError as err:
        ctx.arg_unsupported(name, str(err))
        return None


def _duration(ctx: ImportContext) -> None:
    # sd-scripts trains max_train_epochs when given, else max_train_steps. kohya_ss's own
    # "epoch" field never reaches sd-scripts: kohya_ss passes max_train_steps whenever it is
    # not 0 (its 1600 default silently overrides the epochs) and otherwise an estimate of
    # the steps from epoch. The import reproduces that and says so.
    train = ctx.config.training
    if ctx.kind != KOHYA_SS and ctx.has("epoch"):
        ctx.arg_ignored("epoch", "sd-scripts does not read it (kohya_ss writes it for its own step estimate)")
    values = {name: number(ctx, name) for name in ("max_train_epochs", "max_train_steps", "epoch")}
    epochs, steps, gui = (int(values[n] or 0) for n in ("max_train_epochs", "max_train_steps", "epoch"))

    def use(name: str, field_name: str, value: int, duration: Duration | None) -> bool:
        error = set_field(ctx, train, field_name, value, f"training.{field_name}")
        if error:
            ctx.arg_unsupported(name, error)
            return False
        if duration is not None:
            train.duration = duration
            ctx.arg_mapped(name, f"training.duration, training.{field_name}")
        return True

    linked_dataset = ctx.kind == KOHYA_SS and not keys.is_off(ctx.args.get("dataset_config", ""))
    if epochs and use("max_train_epochs", "max_train_epochs", epochs, Duration.EPOCHS):
        if steps and use("max_train_steps", "max_train_steps", steps, None):
            ctx.arg_ignored("max_train_steps", "max_train_epochs decides the length, as in sd-scripts "
                                               "(kept in training.max_train_steps)")
            ctx.warn(f"max_train_epochs ({epochs}) and max_train_steps ({steps}) are both set: sd-scripts "
                     f"trains {epochs} epochs, and so does the import")
        if gui:
            ctx.arg_ignored("epoch", "kohya_ss passes max_train_epochs to sd-scripts, which decides")
    elif steps and use("max_train_steps", "max_train_steps", steps, Duration.STEPS):
        if gui and use("epoch", "max_train_epochs", gui, None):
            ctx.arg_ignored("epoch", "overridden by max_train_steps, as kohya_ss does "
                                     "(kept in training.max_train_epochs)")
            ctx.warn(f"kohya_ss trains max_train_steps ({steps}) whenever it is not 0 and never passes "
                     f"epoch ({gui}) to sd-scripts, so the import trains {steps} steps; to train {gui} "
                     "epochs instead, set training.duration = epochs")
    elif gui and not linked_dataset:
        use("epoch", "max_train_epochs", gui, Duration.EPOCHS)
    elif gui:
        ctx.arg_ignored("epoch", "with a dataset config kohya_ss passes neither epoch nor steps")
        ctx.warn("epoch is set but max_train_steps is 0 with a dataset config: kohya_ss then lets "
                 f"sd-scripts train its default {train.max_train_steps} steps, and so does the import")
    estimated = ctx.kind == KOHYA_SS and gui and not linked_dataset
    for name in ("max_train_epochs", "max_train_steps", "epoch"):
        if ctx.has(name):
            ctx.arg_ignored(name, "0: kohya_ss estimates the steps from epoch; LoRA Kiln counts them "
                                  "exactly from the bucket plan" if name == "max_train_steps" and estimated
                            else "0: not set")


def _warmup(ctx: ImportContext) -> None:
    # kohya_ss's lr_warmup is a percent of the steps; sd-scripts reads lr_warmup_steps below
    # 1 as a fraction of the steps. Both are our warmup ratio.
    sched = ctx.config.schedule
    steps, percent = number(ctx, "lr_warmup_steps"), number(ctx, "lr_warmup")
    if steps is not None:
        if 0 < steps < 1:
            error = set_field(ctx, sched, "warmup_ratio", steps, "schedule.warmup_ratio")
            (ctx.arg_unsupported("lr_warmup_steps", error) if error
             else ctx.arg_mapped("lr_warmup_steps", "schedule.warmup_ratio"))
        elif steps or not percent:
            ctx.arg_direct("lr_warmup_steps", sched, "warmup_steps", "schedule.warmup_steps")
        else:
            ctx.arg_ignored("lr_warmup_steps", "0: lr_warmup (percent of the steps) decides")
    if percent is not None:
        if steps:
            ctx.arg_ignored("lr_warmup", "lr_warmup_steps is set and decides")
        else:
            error = set_field(ctx, sched, "warmup_ratio", percent / 100, "schedule.warmup_ratio")
            ctx.arg_unsupported("lr_warmup", error) if error else ctx.arg_mapped("lr_warmup", "schedule.warmup_ratio")


def _attention(ctx: ImportContext) -> None:
    # kohya_ss's "xformers" is a choice ("xformers", "sdpa", "none") or, in old files, a
    # switch; sd-scripts has three switches. We have no xformers: sdpa computes the same.
    names = [n for n in ("xformers", "sdpa", "mem_eff_attn") if ctx.has(n)]
    on = {n: str(ctx.value(n)).strip().lower() in ("true", "1", "xformers", "sdpa") for n in names}
    chosen = Attention.SDPA if any(on.values()) else Attention.EAGER
    ctx.config.training.attention = chosen
    for name in names:
        if chosen is Attention.SDPA and not on[name]:
            ctx.arg_ignored(name, keys.OFF)
        else:
            if on[name] and name != "sdpa" and str(ctx.value(name)).lower() != "sdpa":
                ctx.warn(f"{ctx.shown[name]}: LoRA Kiln uses PyTorch's fused attention (sdpa) instead, "
                         "which computes the same in similar memory")
            ctx.arg_mapped(name, "training.attention")


def _latent_cache(ctx: ImportContext) -> None:
    # Two switches are one choice here; sd-scripts turns cache_latents on with _to_disk.
    flags = {n: flag(ctx, n) for n in ("cache_latents", "cache_latents_to_disk") if ctx.has(n)}
    data = ctx.config.dataset
    data.latent_cache = (LatentCache.DISK if flags.get("cache_latents_to_disk")
                         else LatentCache.MEMORY if flags.get("cache_latents") else LatentCache.OFF)
    for name, value in flags.items():
        if value is not None:
            ctx.arg_mapped(name, "dataset.latent_cache")


def _logging(ctx: ImportContext) -> None:
    # A logging folder turns TensorBoard logging on in sd-scripts; ours go to the run folder.
    if ctx.has("logging_dir"):
        if keys.is_off(ctx.value("logging_dir")):
            ctx.arg_ignored("logging_dir", keys.OFF)
        else:
            ctx.config.logging.tensorboard = True
            ctx.arg_mapped("logging_dir", "logging.tensorboard")
    if ctx.has("log_with"):
        text = str(ctx.value("log_with")).strip().lower()
        if keys.is_off(text):
            ctx.arg_ignored("log_with", keys.OFF)
        elif text in ("tensorboard", "all"):
            ctx.config.logging.tensorboard = True
            ctx.arg_mapped("log_with", "logging.tensorboard")
            if text == "all":
                ctx.warn("log_with = all: only TensorBoard logs are written (no wandb)")
        else:
            ctx.arg_ignored("log_with", keys.NO_EFFECT["wandb_api_key"])


def _sample_prompts(ctx: ImportContext) -> None:
    # kohya_ss holds the prompt text itself; sd-scripts names a file of prompts.
    raw = ctx.value("sample_prompts")
    if keys.is_off(raw):
        ctx.arg_ignored("sample_prompts", keys.OFF)
        return
    text = str(raw)
    if ctx.kind != KOHYA_SS:
        path = Path(ctx.resolve_path(text, ctx.base_dir, "sample_prompts"))
        if path.suffix.lower() in (".toml", ".json"):
            ctx.arg_unsupported("sample_prompts", "prompt files in TOML or JSON form are not read; put the "
                                                  "prompts in sampling.prompts, one per line")
            return
        text = _read_prompt_file(ctx, path)
        if text is None:
            return
    ctx.config.sampling.prompts = text
    ctx.arg_mapped("sample_prompts", "sampling.prompts")


def _read_prompt_file(ctx: ImportContext, path: Path) -> str | None:
    """The prompt file's text, and the report of what was read; None (reported) if refused.

    A config can name any file: only a regular file of UTF-8 text up to
    MAX_PROMPT_FILE_BYTES is read. The report's list of files read names it with its size
    and the prompts found, and a warning names it in full when it does not look like a
    prompt file, so a wrong file (a system file, say) does not pass into the preset unseen.
    """
    try:
        data = read_regular_bytes(path, limit=MAX_PROMPT_FILE_BYTES, what="sample_prompts")
        text = decode_text(data, path, "sample_prompts")
    except FileRefused as err:
        ctx.arg_unsupported("sample_prompts", "the prompt file was not found here" if err.missing
                            else f"{path} {err.reason}")
        return None
    count = sum(1 for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    size = size_text(len(data))
    ctx.result.sources.append((str(path), f"sample_prompts: {count_of(count, 'prompt')}, {size}"))
    # A prompt file is a .txt file (sd-scripts' own are); anything else, or a file without a
    # prompt in it, is worth a look before it becomes the preset's prompts.
    doubt = ("it is not a .txt file, so check that it really is a list of prompts"
             if path.suffix.lower() != ".txt" else "" if count else "it holds no prompts")
    if doubt:
        ctx.warn(f"sample_prompts: read {count_of(count, 'prompt')} from {path} ({size}) into sampling.prompts; {doubt}")
    return text


def _sampler(ctx: ImportContext) -> None:
    # sd-scripts also accepts k-diffusion spellings (k_euler, ...) of the same samplers.
    alias = keys.SAMPLER_ALIASES.get(str(ctx.value("sample_sampler")).strip().lower())
    if alias is not None:
        ctx.config.sampling.sampler = alias
        ctx.arg_mapped("sample_sampler", "sampling.sampler")
    else:
        ctx.arg_direct("sample_sampler", ctx.config.sampling, "sampler", "sampling.sampler")


def _clip_skip(ctx: ImportContext) -> None:
    # kohya_ss writes 0 for "not set"; sd-scripts then uses the last layer, i.e. clip skip 1.
    if number(ctx, "clip_skip") == 0 and "clip_skip" in ctx.args:
        ctx.config.model.clip_skip = 1
        ctx.arg_mapped("clip_skip", "model.clip_skip")
    elif ctx.has("clip_skip"):
        ctx.arg_direct("clip_skip", ctx.config.model, "clip_skip", "model.clip_skip")


def _keep_last(ctx: ImportContext) -> None:
    # sd-scripts counts the epoch checkpoints it keeps; our field counts checkpoints too.
    ctx.arg_direct("save_last_n_epochs", ctx.config.output, "keep_last_n", "output.keep_last_n")


# kohya_ss's noise_offset_type chooses which of these it passes to sd-scripts.
_NOISE_KEYS = {"noise_offset": "original", "adaptive_noise_scale": "original", "noise_offset_random_strength": "original",
               "multires_noise_iterations": "multires", "multires_noise_discount": "multires"}


def _noise_offset(ctx: ImportContext) -> None:
    # sd-scripts' own files have no noise_offset_type and every key there counts.
    chosen = ctx.args.get("noise_offset_type")
    kind = str(chosen if chosen is not None else "")
    if ctx.has("noise_offset_type"):
        ctx.arg_ignored("noise_offset_type", "kohya_ss's choice of which noise keys it passes; "
                                             "those are read accordingly")
    for name, needs in _NOISE_KEYS.items():
        if not ctx.has(name):
            continue
        if kind and kind.lower() != needs:
            ctx.arg_ignored(name, f"not used with noise_offset_type {kind} (kohya_ss does not pass it)")
        else:
            ctx.arg_direct(name, ctx.config.training, name, f"training.{name}")


def _family(ctx: ImportContext) -> None:
    # Two switches of the other tools are our model family (validation refuses SD 2.x/SDXL).
    for name, family in (("v2", ModelFamily.SD2), ("sdxl", ModelFamily.SDXL)):
        if ctx.has(name) and (on := flag(ctx, name)) is not None:
            if on:
                ctx.config.model.family = family
                ctx.arg_mapped(name, "model.family")
            else:
                ctx.arg_ignored(name, keys.OFF)


def _stop_text_encoder(ctx: ImportContext) -> None:
    # kohya_ss says "not yet supported. Ignoring" and drops it; in sd-scripts it is train_db.py's.
    if ctx.kind == KOHYA_SS or keys.is_off(ctx.value("stop_text_encoder_training")):
        ctx.arg_ignored("stop_text_encoder_training", "kohya_ss ignores it too")
    else:
        ctx.arg_unsupported("stop_text_encoder_training", "not a LoRA option (sd-scripts' train_db.py)")


def _vae_batch_size(ctx: ImportContext) -> None:
    # kohya_ss writes 0 for "not set" and then passes nothing: sd-scripts encodes one at a time.
    if keys.is_off(ctx.value("vae_batch_size")):
        ctx.arg_ignored("vae_batch_size", "0 means not set (kohya_ss passes nothing); LoRA Kiln's default applies")
    else:
        ctx.arg_direct("vae_batch_size", ctx.config.dataset, "vae_batch_size", "dataset.vae_batch_size")


MISC_HANDLERS: tuple[tuple[tuple[str, ...], Callable[[ImportContext], None]], ...] = (
    (("epoch", "max_train_epochs", "max_train_steps"), _duration),
    (("lr_warmup", "lr_warmup_steps"), _warmup),
    (("xformers", "sdpa", "mem_eff_attn"), _attention),
    (("cache_latents", "cache_latents_to_disk"), _latent_cache),
    (("logging_dir", "log_with"), _logging),
    (("sample_prompts",), _sample_prompts),
    (("sample_sampler",), _sampler),
    (("clip_skip",), _clip_skip),
    (("save_last_n_epochs",), _keep_last),
    (("noise_offset", "noise_offset_type", *_NOISE_KEYS), _noise_offset),
    (("v2", "sdxl"), _family),
    (("stop_text_encoder_training",), _stop_text_encoder),
    (("vae_batch_size",), _vae_batch_size),
)
