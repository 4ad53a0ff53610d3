"""The SDXL keys of a Kohya import: kohya_ss's sdxl_* switches, sd-scripts' text-encoder
output cache and the per-encoder learning rates of sdxl_train.py.

kohya_ss passes sdxl_no_half_vae and sdxl_cache_text_encoder_outputs to sd-scripts only
when "sdxl" is on; an sd-scripts config has no "sdxl" switch, so its SDXL-only keys are
what says the config is for sdxl_train_network.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from core.config.schema import ModelFamily, TextEncoderCache
from core.kohya import import_keys as keys
from core.kohya.import_common import CONFIG, KOHYA_SS
from core.kohya.import_misc import flag, number

if TYPE_CHECKING:  # pragma: no cover - typing only
    from core.kohya.import_common import ImportContext

CACHE_KEYS = ("cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk", "sdxl_cache_text_encoder_outputs")
ENCODER_RATES = ("learning_rate_te1", "learning_rate_te2")
# Arguments only sd-scripts' SDXL scripts have (its SD3 and FLUX scripts have them too, but
# also the text encoders named below).
_SDXL_SCRIPT_KEYS = ("cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk", *ENCODER_RATES)
_OTHER_FAMILY_KEYS = ("clip_l", "clip_g", "t5xxl", "ae")
_NOT_SDXL = "only used for SDXL models"


def _sdxl_switch_on(ctx: ImportContext) -> bool:
    """kohya_ss's "sdxl" checkbox, read as kohya_ss does (old files write "True")."""
    try:
        return bool(keys.loosen(ctx.args.get("sdxl", False), bool))
    except ValueError:
        return False


def _infer_family(ctx: ImportContext) -> None:
    # An sd-scripts config that sets an SDXL-only argument was written for an SDXL script.
    if ctx.kind != CONFIG or ctx.config.model.family not in (ModelFamily.AUTO, ModelFamily.SD1):
        return
    given = [name for name in _SDXL_SCRIPT_KEYS if name in ctx.args and not keys.is_off(ctx.args[name])]
    if given and not any(name in ctx.args for name in _OTHER_FAMILY_KEYS):
        ctx.config.model.family = ModelFamily.SDXL
        ctx.warn(f"model.family: set to sdxl because {', '.join(given)} "
                 f"{'is an argument' if len(given) == 1 else 'are arguments'} of sd-scripts' SDXL scripts")


def _no_half_vae(ctx: ImportContext) -> None:
    # kohya_ss's SDXL checkbox for sd-scripts' no_half_vae.
    if not _sdxl_switch_on(ctx):
        ctx.arg_ignored("sdxl_no_half_vae", _NOT_SDXL)
    elif (on := flag(ctx, "sdxl_no_half_vae")) is not None:
        ctx.config.model.no_half_vae = on
        ctx.arg_mapped("sdxl_no_half_vae", "model.no_half_vae")


def _text_encoder_cache(ctx: ImportContext) -> None:
    # Three switches are one choice here; sd-scripts turns the cache on with _to_disk. A file
    # that leaves them off gets LoRA Kiln's default, which caches only where sd-scripts could
    # (same outputs, less work), so "off" is not copied.
    data, net = ctx.config.dataset, ctx.config.network
    if ctx.has("sdxl_cache_text_encoder_outputs") and not _sdxl_switch_on(ctx):
        ctx.arg_ignored("sdxl_cache_text_encoder_outputs", _NOT_SDXL)
    flags = {n: flag(ctx, n) for n in CACHE_KEYS if ctx.has(n)}
    if flags.get("cache_text_encoder_outputs_to_disk"):
        data.text_encoder_cache = TextEncoderCache.DISK
    elif any(flags.values()):
        data.text_encoder_cache = TextEncoderCache.MEMORY
    for name, value in flags.items():
        if value:
            ctx.arg_mapped(name, "dataset.text_encoder_cache")
        elif value is not None:
            ctx.arg_ignored(name, "off: LoRA Kiln caches text-encoder outputs only where this is possible "
                                  "(nothing changes in training)")
    if any(flags.values()) and net.train_text_encoder:
        ctx.warn("the text-encoder outputs are to be cached, but the text encoder is trained (no "
                 "network_train_unet_only, or a text-encoder learning rate): sd-scripts refuses that; "
                 "LoRA Kiln trains the text encoder and encodes every step"
                 + (" once dataset.text_encoder_cache is memory" if data.text_encoder_cache is
                    TextEncoderCache.DISK else ""))


def _encoder_rates(ctx: ImportContext) -> None:
    # sdxl_train.py's rates of text encoder 1 and 2; 0 leaves that encoder untrained.
    opt, net = ctx.config.optimizer, ctx.config.network
    if ctx.kind == KOHYA_SS and not _sdxl_switch_on(ctx):
        for name in ENCODER_RATES:
            if ctx.has(name):
                ctx.arg_ignored(name, _NOT_SDXL)
        return
    zero = []
    for name, rate_field, switch in (("learning_rate_te1", "text_encoder_lr", "train_text_encoder_1"),
                                     ("learning_rate_te2", "text_encoder_2_lr", "train_text_encoder_2")):
        value = number(ctx, name)
        if value is None:
            continue
        if value == 0:
            setattr(net, switch, False)
            zero.append(name)
            ctx.arg_mapped(name, f"network.{switch}")
        elif name == "learning_rate_te1" and opt.text_encoder_lr is not None and "text_encoder_lr" in ctx.done:
            ctx.arg_ignored(name, "text_encoder_lr is also set, and is used")
        else:
            ctx.arg_direct(name, opt, rate_field, f"optimizer.{rate_field}")
    if len(zero) == 2:
        net.train_text_encoder = False
        ctx.warn("learning_rate_te1 and learning_rate_te2 are both 0: neither text encoder trains "
                 "(network.train_text_encoder off)")


def _sdxl(ctx: ImportContext) -> None:
    _infer_family(ctx)
    if ctx.has("sdxl_no_half_vae"):
        _no_half_vae(ctx)
    if any(ctx.has(n) for n in ENCODER_RATES):
        _encoder_rates(ctx)
    if any(ctx.has(n) for n in CACHE_KEYS):
        _text_encoder_cache(ctx)


SDXL_HANDLERS: tuple[tuple[tuple[str, ...], Callable[[ImportContext], None]], ...] = (
    (("sdxl_no_half_vae", *ENCODER_RATES, *CACHE_KEYS), _sdxl),
)
