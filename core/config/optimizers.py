"""What each optimizer setting means: the optimizer class and the keyword arguments a config
asks for, Kohya's ``ss_optimizer`` description of it, and the warmup length. The trainer
builds its optimizer from these (core.training.optim), the LoRA metadata and the sd-scripts
export describe it from the same answer, so all three agree.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from core.config.optimizer_support import unavailable_message
from core.config.schema import OptimizerParams, OptimizerType, ScheduleParams


class OptimizerSetupError(ValueError):
    """The optimizer cannot be built as configured; the message names the field."""


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al., 2023): the update is the sign of an interpolated momentum, so its
    size is set by the learning rate alone (use ~3-10x smaller rates than AdamW)."""

    # LoRA files name it in ss_optimizer by module and class; it lived in core.training.optim
    # (which still exports it) and files trained since say so, so the name stays.
    __module__ = "core.training.optim"

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
        reason = unavailable_message(OptimizerType.ADAMW8BIT) or (
            f"AdamW8bit needs bitsandbytes, which is installed but cannot be loaded here ({error}); "
            "reinstall it into LoRA Kiln's environment, or choose AdamW")
        raise OptimizerSetupError(f"optimizer.type: {reason}") from None
    return bnb.optim.AdamW8bit  # bitsandbytes 0.50 runs its 8-bit optimizers on CPUs too


def warmup_steps(schedule: ScheduleParams, total_steps: int) -> int:
    if schedule.warmup_steps:
        return schedule.warmup_steps
    return int(schedule.warmup_ratio * total_steps)
