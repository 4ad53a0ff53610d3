"""Optimisers and learning-rate schedules from the schema, with Kohya's param groups."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from core.config import OptimizerParams, OptimizerType, ScheduleParams


class OptimizerSetupError(ValueError):
    """The optimizer cannot be built as configured; the message names the field."""


@dataclass
class ParamGroup:
    name: str  # "unet" or "textencoder", as Kohya's log tags name them
    params: list[torch.nn.Parameter]
    lr: float


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al., 2023): the update is the sign of an interpolated momentum, so its
    size is set by the learning rate alone (use ~3-10x smaller rates than AdamW)."""

    def __init__(self, params: Any, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                momentum = state["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                update = momentum.mul(beta1).add(p.grad, alpha=1 - beta1).sign_()
                p.add_(update, alpha=-group["lr"])
                momentum.mul_(beta2).add_(p.grad, alpha=1 - beta2)
        return loss


def group_lrs(opt: OptimizerParams) -> tuple[float, float]:
    """(U-Net lr, text-encoder lr): each falls back to the base learning rate."""
    unet = opt.learning_rate if opt.unet_lr is None else opt.unet_lr
    text = opt.learning_rate if opt.text_encoder_lr is None else opt.text_encoder_lr
    return unet, text


def optimizer_description(opt: OptimizerParams) -> str:
    """Kohya's ss_optimizer form: "module.Class(key=value,...)"."""
    cls, kwargs = optimizer_class_and_kwargs(opt, check_only=True)
    args = ",".join(f"{k}={v}" for k, v in kwargs.items())
    return f"{cls.__module__}.{cls.__name__}({args})"


def optimizer_class_and_kwargs(opt: OptimizerParams, check_only: bool = False) -> tuple[type, dict[str, Any]]:
    kind = opt.type
    betas = tuple(opt.betas)
    if kind is OptimizerType.ADAMW:
        cls, kwargs = torch.optim.AdamW, {"betas": betas, "eps": opt.eps, "weight_decay": opt.weight_decay}
    elif kind is OptimizerType.ADAMW8BIT:
        cls = _adamw8bit(check_only)
        kwargs = {"betas": betas, "eps": opt.eps, "weight_decay": opt.weight_decay}
    elif kind is OptimizerType.PRODIGY:
        from prodigyopt import Prodigy

        cls, kwargs = Prodigy, {"betas": betas, "eps": opt.eps, "weight_decay": opt.weight_decay,
                                "decouple": opt.decouple, "use_bias_correction": opt.use_bias_correction,
                                "safeguard_warmup": opt.safeguard_warmup, "d0": opt.d0,
                                "d_coef": opt.d_coef, "growth_rate": opt.growth_rate}
    elif kind is OptimizerType.DADAPT_ADAM:
        from dadaptation import DAdaptAdam

        # DAdaptAdam has no d_coef; the schema's d_coef is Prodigy's alone.
        cls, kwargs = DAdaptAdam, {"betas": betas, "eps": opt.eps, "weight_decay": opt.weight_decay,
                                   "decouple": opt.decouple, "use_bias_correction": opt.use_bias_correction,
                                   "d0": opt.d0, "growth_rate": opt.growth_rate}
    elif kind is OptimizerType.LION:
        cls, kwargs = Lion, {"betas": betas, "weight_decay": opt.weight_decay}
    else:
        from transformers.optimization import Adafactor

        # With an explicit learning rate Adafactor must not use its own relative step.
        cls, kwargs = Adafactor, {"relative_step": False, "scale_parameter": False,
                                  "warmup_init": False, "weight_decay": opt.weight_decay}
    kwargs.update(opt.extra_args)
    accepted = inspect.signature(cls.__init__).parameters
    unknown = [k for k in opt.extra_args if k not in accepted]
    if unknown:
        raise OptimizerSetupError(f"optimizer.extra_args: {cls.__name__} takes no argument "
                                  + ", ".join(repr(k) for k in unknown))
    return cls, kwargs


def _adamw8bit(check_only: bool) -> type:
    try:  # core/__init__.py quiets a harmless note bitsandbytes logs at import
        import bitsandbytes as bnb  # type: ignore[import-not-found]
    except (ImportError, OSError, RuntimeError) as error:
        if check_only:
            return type("AdamW8bit", (), {"__module__": "bitsandbytes.optim"})
        from core.optimizer_support import unavailable_message

        reason = unavailable_message(OptimizerType.ADAMW8BIT) or (
            f"AdamW8bit needs bitsandbytes, which is installed but cannot be loaded here ({error}); "
            "reinstall it into LoRA Kiln's environment, or choose AdamW")
        raise OptimizerSetupError(f"optimizer.type: {reason}") from None
    return bnb.optim.AdamW8bit  # bitsandbytes 0.50 runs its 8-bit optimizers on CPUs too


def build_optimizer(groups: list[ParamGroup], opt: OptimizerParams) -> torch.optim.Optimizer:
    cls, kwargs = optimizer_class_and_kwargs(opt)
    param_groups = [{"params": g.params, "lr": g.lr, "name": g.name} for g in groups if g.params]
    if not param_groups:
        raise OptimizerSetupError("network: there are no trainable parameters")
    if opt.type.adapts_lr and len({g["lr"] for g in param_groups if g["lr"] != 0}) > 1:
        # Prodigy and D-Adaptation estimate one step size for all groups: they only accept
        # one learning rate (a group at 0 is frozen). Say so now, not at the first step.
        rates = ", ".join(f"{g['name']} {g['lr']:g}" for g in param_groups)
        raise OptimizerSetupError(f"optimizer: {opt.type.value} needs the same learning rate for the "
                                  f"U-Net and the text encoder (or 0 for one of them); got {rates}")
    try:
        return cls(param_groups, lr=param_groups[0]["lr"], **kwargs)
    except (TypeError, ValueError) as err:
        raise OptimizerSetupError(f"optimizer: {cls.__name__} refused its settings: {err}") from None


def warmup_steps(schedule: ScheduleParams, total_steps: int) -> int:
    if schedule.warmup_steps:
        return schedule.warmup_steps
    return int(schedule.warmup_ratio * total_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: ScheduleParams,
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    from diffusers.optimization import get_scheduler

    return get_scheduler(schedule.scheduler.value, optimizer,
                         num_warmup_steps=warmup_steps(schedule, total_steps),
                         num_training_steps=total_steps, num_cycles=schedule.num_cycles,
                         power=schedule.power)


def current_lrs(optimizer: torch.optim.Optimizer) -> tuple[dict[str, float], dict[str, float]]:
    """(lr per group, d*lr per group) — the second only for optimisers that keep ``d``."""
    lrs, dlrs = {}, {}
    for index, group in enumerate(optimizer.param_groups):
        name = group.get("name", f"group{index}")
        lrs[name] = float(group["lr"])
        if "d" in group:
            dlrs[name] = float(group["d"]) * float(group["lr"])
    return lrs, dlrs
