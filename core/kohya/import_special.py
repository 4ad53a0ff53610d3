"""The arguments of a Kohya import: one-to-one through the schema, and the few that are not.

Each special handler below exists because kohya_ss or sd-scripts give the key a meaning
that is more than "this value into that field"; the comment on each says which.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from core.kohya import import_keys as keys
from core.config.schema import NetworkType, OptimizerParams, OptimizerType
from core.kohya.import_common import DIRECT, KOHYA_SS
from core.kohya.import_dataset import ARGUMENTS as DATASET_ARGUMENTS
from core.kohya.import_misc import MISC_HANDLERS, flag, set_field
from core.kohya.import_sdxl import SDXL_HANDLERS
from core.config.params import param_specs, spec_for

if TYPE_CHECKING:  # pragma: no cover - typing only
    from core.kohya.import_common import ImportContext

# OptimizerParams fields without a kohya name are named after the optimizer's own keyword
# arguments, so an optimizer_args item of that name sets the field.
OPTIMIZER_KWARGS = frozenset(s.name for s in param_specs(OptimizerParams)
                             if s.info.kohya is None and s.name != "extra_args")


def parse_arg(text: str) -> tuple[str, Any]:
    """kohya_keys.parse_arg, with every way Python's literal reader fails as a ValueError:
    "{[]: 1}" is a TypeError there, and brackets nested thousands deep a RecursionError."""
    try:
        return keys.parse_arg(text)
    except (TypeError, RecursionError, MemoryError, OverflowError) as error:
        raise ValueError(f"'{text[:40]}' cannot be read as name=value ({type(error).__name__})") from None


def map_arguments(ctx: ImportContext) -> None:
    """Map every argument of the main file that is not a dataset option."""
    special = {name for names, _ in _SPECIAL for name in names}
    for name in list(ctx.args):
        if name in DIRECT and name not in special and name not in DATASET_ARGUMENTS and ctx.has(name):
            group, spec = DIRECT[name]
            ctx.arg_direct(name, getattr(ctx.config, group), spec.name, f"{group}.{spec.name}")
    for names, handler in _SPECIAL:
        if any(ctx.has(name) for name in names):
            handler(ctx)


def _network(ctx: ImportContext) -> None:
    # LoRA_type (kohya_ss) and network_module + network_args (sd-scripts) together choose
    # the network; conv_dim/conv_alpha only mean something for LoCon; alpha 0 means dim.
    net = ctx.config.network
    items: list[tuple[str, Any]] = []
    shown = ctx.shown.get("network_args", "network_args")
    if ctx.has("network_args"):
        try:
            texts = keys.split_args(ctx.value("network_args"))
        except ValueError as err:
            ctx.arg_unsupported("network_args", str(err))
            texts = []
        else:
            if texts:
                ctx.done.add("network_args")
            else:
                ctx.arg_ignored("network_args", keys.OFF)
        for text in texts:
            try:
                items.append(parse_arg(text))
            except ValueError as err:
                ctx.unsupported(f"{shown}.{text}", text, str(err))
    given = dict(items)
    module = str(ctx.args.get("network_module", "networks.lora")).strip()
    lycoris = module == "lycoris.kohya"
    if ctx.has("LoRA_type"):
        text = str(ctx.value("LoRA_type")).strip()
        kind = keys.NETWORK_TYPES.get(text.lower())
        if kind is None:
            ctx.arg_unsupported("LoRA_type", "LoRA Kiln trains LoRA (Standard), LoCon, LoHa, LoKr and iA3; "
                                "imported as LoRA")
        else:
            net.type = kind
            ctx.arg_mapped("LoRA_type", "network.type")
            if text.lower() in ("locon", "lycoris/locon"):
                ctx.warn("LoRA_type: LyCORIS's LoCon is trained as Kohya's LoCon (the same layers, "
                         "saved in the Kohya LoRA format)")
    if ctx.has("network_module"):
        algo = str(given.get("algo", "lora")).strip().lower()
        if module == "networks.lora":
            net.type = NetworkType.LOCON if "conv_dim" in given else NetworkType.LORA
            ctx.arg_mapped("network_module", "network.type")
        elif lycoris and algo in keys.LYCORIS_ALGOS:
            net.type = keys.LYCORIS_ALGOS[algo]
            if net.type is NetworkType.LORA and "conv_dim" in given:
                net.type = NetworkType.LOCON
            ctx.arg_mapped("network_module", "network.type")
            if net.type is NetworkType.LOCON:
                ctx.warn("network_module: LyCORIS's LoCon is trained as Kohya's LoCon (the same layers)")
        elif lycoris:
            ctx.arg_unsupported("network_module", f"LyCORIS's algo {algo} is not implemented (LoRA Kiln trains "
                                "lora, locon, loha, lokr and ia3); imported as LoRA")
        else:
            ctx.arg_unsupported("network_module", f"{module} is not implemented; imported as LoRA")
    lycoris_type = lycoris or str(ctx.args.get("LoRA_type", "")).lower().startswith("lycoris") or net.type.is_lycoris
    if ctx.has("network_dim"):
        _network_dim(ctx)
    for name, value in items:
        key = f"{shown}.{name}"
        if name in ("conv_dim", "conv_alpha", "dropout"):
            field_name = "dropout" if name == "dropout" else name
            error = set_field(ctx, net, field_name, value, f"network.{field_name}")
            (ctx.unsupported(key, value, error) if error else ctx.mapped(key, f"network.{field_name}", value))
        elif name in keys.LORA_NETWORK_OPTIONS:
            _lora_network_option(ctx, key, name, value, lycoris_type)
        elif name == "algo" and lycoris and str(value).lower() in keys.LYCORIS_ALGOS:
            ctx.mapped(key, "network.type", value)
        elif name == "preset" and lycoris and net.type is NetworkType.IA3 and str(value).lower() == "ia3":
            ctx.ignored(key, value, "LoRA Kiln's IA3 adapts the layers of LyCORIS's ia3 preset")
        elif name in keys.LYCORIS_OPTIONS and lycoris:
            field_name = keys.LYCORIS_OPTIONS[name]
            error = set_field(ctx, net, field_name, value, f"network.{field_name}")
            (ctx.unsupported(key, value, error) if error else ctx.mapped(key, f"network.{field_name}", value))
        else:
            unsupported, reason = keys.classify_other(name, value, {"LoRA_type": "LyCORIS" if lycoris else ""})
            (ctx.unsupported if unsupported else ctx.ignored)(key, value, reason)
    for name in ("conv_dim", "conv_alpha"):
        if ctx.has(name):
            if net.type.has_conv:
                ctx.arg_direct(name, net, name, f"network.{name}")
            else:
                ctx.arg_ignored(name, f"only used by LoCon, LoHa and LoKr (this network is {net.type.value})")
    for name in keys.LORA_NETWORK_OPTIONS:  # kohya_ss's keys; it passes them on in network_args
        if ctx.has(name):
            ctx.done.add(name)
            _lora_network_option(ctx, ctx.shown.get(name, name), name, ctx.value(name), lycoris_type)
    # kohya_ss's own keys for the LyCORIS options (sd-scripts has them in network_args).
    for name, field_name in keys.LYCORIS_OPTIONS.items():
        if ctx.has(name) and lycoris_type:
            if field_name.startswith("lokr_") and net.type is not NetworkType.LOKR:
                ctx.arg_ignored(name, f"only used by LoKr (this network is {net.type.value})")
            else:
                ctx.arg_direct(name, net, field_name, f"network.{field_name}")
    if ctx.has("network_alpha"):
        try:
            zero = float(keys.loosen(ctx.value("network_alpha"), float)) == 0
        except (TypeError, ValueError, OverflowError):
            zero = False
        if zero:  # Kohya's LoRA module reads alpha 0 as alpha = dim (scale 1)
            net.alpha = float(net.dim)
            ctx.arg_mapped("network_alpha", "network.alpha")
            ctx.warn(f"network_alpha 0 means alpha = dim in Kohya: imported as {net.dim}")
        else:
            ctx.arg_direct("network_alpha", net, "alpha", "network.alpha")


def _lora_network_option(ctx: ImportContext, key: str, name: str, value: Any, lycoris_type: bool) -> None:
    """rank/module dropout and the per-block settings: fields of the same name, for LoRA and LoCon."""
    text_field = isinstance(getattr(ctx.config.network, name), str)
    if text_field and isinstance(value, (tuple, list)) and not isinstance(value, bool):
        # "down_lr_weight=1,1,0.5" reads as a Python tuple; the field keeps sd-scripts' text
        value = ",".join(str(v) for v in value)
    elif text_field and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # a single number ("mid_lr_weight=0") is a list of one, and 0 means something
    if value is None or (isinstance(value, str) and not value.strip()) or (not text_field and keys.is_off(value)):
        ctx.ignored(key, value, keys.OFF)
    elif lycoris_type or ctx.config.network.type.is_lycoris:
        ctx.unsupported(key, value, f"LoRA Kiln applies {name} to LoRA and LoCon only (sd-scripts' networks.lora), "
                                    f"not to {ctx.config.network.type.value}")
    else:
        error = set_field(ctx, ctx.config.network, name, value, f"network.{name}")
        (ctx.unsupported(key, value, error) if error else ctx.mapped(key, f"network.{name}", value))


def _network_dim(ctx: ImportContext) -> None:
    # LyCORIS users ask for full-rank LoKr with a dim far above any rank (10000 and more): every
    # factor is then stored whole, which is LoRA Kiln's "LoKr full matrix".
    net = ctx.config.network
    try:
        dim = float(keys.loosen(ctx.value("network_dim"), float))
    except (TypeError, ValueError, OverflowError):
        dim = 0.0
    limit = spec_for(type(net), "dim").info.maximum
    if net.type is NetworkType.LOKR and dim > limit:
        net.lokr_full_matrix = True
        ctx.arg_mapped("network_dim", "network.lokr_full_matrix")
        ctx.warn(f"network_dim: LoKr with dim {dim:g} keeps whole Kronecker factors (LyCORIS's full-rank "
                 "LoKr): imported as network.lokr_full_matrix on")
    else:
        ctx.arg_direct("network_dim", net, "dim", "network.dim")


def _optimizer(ctx: ImportContext) -> None:
    # Names differ between the tools (DAdaptation, AdamW8bit via use_8bit_adam), and the
    # arguments are one text or list whose items belong to several fields.
    opt = ctx.config.optimizer
    chosen = None
    if ctx.has("optimizer_type"):
        raw = str(ctx.value("optimizer_type")).strip()
        chosen = keys.OPTIMIZERS.get(raw.lower())
        if not raw:
            ctx.arg_ignored("optimizer_type", "empty: LoRA Kiln's default applies")
        elif chosen is None:
            ctx.arg_unsupported("optimizer_type", f"not implemented in LoRA Kiln; kept {opt.type.value}")
        else:
            opt.type = chosen
            ctx.arg_mapped("optimizer_type", "optimizer.type")
            if raw.lower() == "dadaptation":
                ctx.warn("optimizer: sd-scripts' DAdaptation is the preprint version of DAdaptAdam; "
                         "DAdaptAdam is used")
    if ctx.has("use_8bit_adam"):
        on = flag(ctx, "use_8bit_adam")
        if on and chosen is None:
            opt.type = chosen = keys.OPTIMIZERS["adamw8bit"]
            ctx.arg_mapped("use_8bit_adam", "optimizer.type")
        elif on is not None:
            ctx.arg_ignored("use_8bit_adam", "optimizer_type decides" if on else keys.OFF)
    given: set[str] = set()
    if ctx.has("optimizer_args"):
        given = _optimizer_args(ctx)
    own = {k: v for k, v in keys.OPTIMIZER_OWN_DEFAULTS.get(chosen, {}).items() if k not in given} \
        if chosen else {}
    for name, value in own.items():
        setattr(opt, name, value)
    if own:
        ctx.warn(f"optimizer_args: {opt.type.value}'s own defaults are used for what the file does not "
                 "set, as in sd-scripts: " + ", ".join(f"{k}={v}" for k, v in own.items()))
    if chosen is OptimizerType.ADAFACTOR:
        _adafactor(ctx)


def _adafactor(ctx: ImportContext) -> None:
    # sd-scripts' get_optimizer: relative_step is True unless optimizer_args say otherwise (and
    # warmup_init turns it back on); the rest are transformers' Adafactor defaults. With
    # relative_step Adafactor chooses its own step size, and sd-scripts swaps the schedule for
    # its "adafactor" one, which only reports the learning rate.
    extra = ctx.config.optimizer.extra_args
    filled = {k: v for k, v in keys.ADAFACTOR_SD_SCRIPTS_ARGS.items() if k not in extra}
    extra.update(filled)
    if extra.get("warmup_init") is True and extra.get("relative_step") is False:
        extra["relative_step"] = True
        ctx.warn("optimizer_args: warmup_init=True needs relative_step, so sd-scripts sets relative_step=True, "
                 "and so does the import")
    if filled:
        ctx.warn("optimizer_args: Adafactor gets sd-scripts' defaults for what the file does not set: "
                 + ", ".join(f"{k}={v}" for k, v in filled.items()))
    if extra.get("relative_step") is True:
        ctx.warn("Adafactor with relative_step=True sets its own step size (growing with the steps, scaled by "
                 "each weight's size): the learning rate and the schedule only show, as in sd-scripts; set "
                 "optimizer.extra_args.relative_step = false to train at the learning rate instead")


def _optimizer_args(ctx: ImportContext) -> set[str]:
    opt = ctx.config.optimizer
    shown = ctx.shown["optimizer_args"]
    try:
        texts = keys.split_args(ctx.value("optimizer_args"))
    except ValueError as err:
        ctx.arg_unsupported("optimizer_args", str(err))
        return set()
    if not texts:
        ctx.arg_ignored("optimizer_args", keys.OFF)
        return set()
    ctx.done.add("optimizer_args")
    given: set[str] = set()
    for text in texts:
        try:
            name, value = parse_arg(text)
        except ValueError as err:
            ctx.unsupported(f"{shown}.{text}", text, str(err))
            continue
        key = f"{shown}.{name}"
        if name in OPTIMIZER_KWARGS:
            error = set_field(ctx, opt, name, value, f"optimizer.{name}")
            if error:
                ctx.unsupported(key, value, error)
                continue
            given.add(name)
            ctx.mapped(key, f"optimizer.{name}", value)
        elif isinstance(value, (bool, int, float, str)):
            opt.extra_args[name] = value
            ctx.mapped(key, f"optimizer.extra_args.{name}", value)
        else:
            ctx.unsupported(key, value, "only single values (number, true/false, text) can be passed on")
    return given


def _learning_rates(ctx: ImportContext) -> None:
    # kohya_ss writes 0 (or "") for "not set", so the base learning rate applies; and when
    # only one of the two is set it trains only that part (network_train_unet_only or
    # network_train_text_encoder_only). sd-scripts configs mean the number they give.
    opt, net = ctx.config.optimizer, ctx.config.network
    if ctx.kind == KOHYA_SS:
        rates: dict[str, float] = {}
        for name in ("unet_lr", "text_encoder_lr"):
            if ctx.has(name):
                raw = ctx.value(name)
                try:
                    rates[name] = 0.0 if keys.is_off(raw) else float(keys.loosen(raw, float))
                except (TypeError, ValueError, OverflowError):
                    ctx.arg_unsupported(name, f"{raw!r} is not a number")
        unet, text = rates.get("unet_lr", 0.0), rates.get("text_encoder_lr", 0.0)
        for name, rate in rates.items():
            if rate:
                ctx.arg_direct(name, opt, name, f"optimizer.{name}")
        if unet and not text and "text_encoder_lr" in rates:
            net.train_text_encoder = False
            ctx.arg_mapped("text_encoder_lr", "network.train_text_encoder")
            ctx.warn("text_encoder_lr is 0 and unet_lr is not: kohya_ss then trains the U-Net only "
                     "(network_train_unet_only), and so does the import")
        elif text and not unet and "unet_lr" in rates:
            net.train_unet = False
            ctx.arg_mapped("unet_lr", "network.train_unet")
            ctx.warn("unet_lr is 0 and text_encoder_lr is not: kohya_ss then trains the text encoder "
                     "only (network_train_text_encoder_only), and so does the import")
        for name in ("unet_lr", "text_encoder_lr"):
            if ctx.has(name):
                ctx.arg_ignored(name, "0 means not set in kohya_ss: the base learning rate applies")
    else:
        if ctx.has("text_encoder_lr") and isinstance(ctx.value("text_encoder_lr"), list):
            _rate_list(ctx)
        for name in ("unet_lr", "text_encoder_lr"):
            if ctx.has(name):
                ctx.arg_direct(name, opt, name, f"optimizer.{name}")
    for name, field_name in (("network_train_unet_only", "train_text_encoder"),
                             ("network_train_text_encoder_only", "train_unet")):
        if ctx.has(name) and (on := flag(ctx, name)) is not None:
            setattr(net, field_name, not on)
            ctx.arg_mapped(name, f"network.{field_name}")


def _rate_list(ctx: ImportContext) -> None:
    # sd-scripts' text_encoder_lr may be a list (one rate per text encoder), but its
    # networks.lora, the LoRA of SD 1.x and SDXL, uses the first value for every encoder.
    rates = ctx.value("text_encoder_lr")
    if not rates:
        ctx.arg_ignored("text_encoder_lr", keys.OFF)
        return
    error = set_field(ctx, ctx.config.optimizer, "text_encoder_lr", rates[0], "optimizer.text_encoder_lr")
    if error:
        ctx.arg_unsupported("text_encoder_lr", error)
        return
    ctx.arg_mapped("text_encoder_lr", "optimizer.text_encoder_lr")
    if any(not keys.same_value(rate, rates[0]) for rate in rates[1:]):
        ctx.warn(f"text_encoder_lr = {rates!r}: sd-scripts' networks.lora trains every text encoder at the "
                 f"first rate ({rates[0]}), and so does the import; set optimizer.text_encoder_2_lr to "
                 "give SDXL's second encoder its own")


_SPECIAL: tuple[tuple[tuple[str, ...], Callable[[ImportContext], None]], ...] = (
    (("LoRA_type", "network_module", "network_args", "conv_dim", "conv_alpha", "network_alpha", "network_dim",
      *keys.LYCORIS_OPTIONS, *keys.LORA_NETWORK_OPTIONS), _network),
    (("optimizer_type", "use_8bit_adam", "optimizer_args"), _optimizer),
    (("unet_lr", "text_encoder_lr", "network_train_unet_only", "network_train_text_encoder_only"),
     _learning_rates),
    *MISC_HANDLERS,
    *SDXL_HANDLERS,  # after MISC_HANDLERS' model family
)
