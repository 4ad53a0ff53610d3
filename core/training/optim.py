"""Optimisers and learning-rate schedules from the schema, with Kohya's param groups. Which
class and arguments a setting means is :mod:`core.config.optimizers`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.config.optimizers import Lion, OptimizerSetupError, optimizer_class_and_kwargs, warmup_steps
from core.config.schema import OptimizerParams, ScheduleParams

__all__ = ["Lion", "OptimizerSetupError", "ParamGroup", "build_optimizer", "build_scheduler",
           "current_lrs", "group_lrs", "warmup_steps"]


@dataclass
class ParamGroup:
    name: str  # "unet" or "text_encoder" (TensorBoard tags use Kohya's "textencoder")
    params: list[torch.nn.Parameter]
    lr: float
    base_lr: float | None = None  # a block's group: the U-Net lr its block weight scales (lr otherwise)


def group_lrs(opt: OptimizerParams) -> tuple[float, float]:
    """(U-Net lr, text-encoder lr): each falls back to the base learning rate."""
    unet = opt.learning_rate if opt.unet_lr is None else opt.unet_lr
    text = opt.learning_rate if opt.text_encoder_lr is None else opt.text_encoder_lr
    return unet, text


def build_optimizer(groups: list[ParamGroup], opt: OptimizerParams) -> torch.optim.Optimizer:
    cls, kwargs = optimizer_class_and_kwargs(opt)
    param_groups = [{"params": g.params, "lr": g.lr, "name": g.name} for g in groups if g.params]
    if not param_groups:
        raise OptimizerSetupError("network: there are no trainable parameters")
    # Block learning-rate weights are multipliers the user asked for (Prodigy's and D-Adaptation's
    # step is d times each group's lr), so groups are compared by the lr they scale.
    base_lrs = {g.lr if g.base_lr is None else g.base_lr for g in groups if g.params and g.lr != 0}
    if opt.type.adapts_lr and len(base_lrs) > 1:
        # Prodigy and D-Adaptation estimate one step size for all groups: they only accept
        # one learning rate (a group at 0 is frozen). Say so now, not at the first step.
        rates = ", ".join(f"{g['name']} {g['lr']:g}" for g in param_groups)
        raise OptimizerSetupError(f"optimizer: {opt.type.value} needs the same learning rate for the "
                                  f"U-Net and the text encoder (or 0 for one of them); got {rates}")
    # Adafactor's relative step chooses its own step size and refuses an lr beside it; the
    # groups keep theirs, which the schedule scales and the logs show, as in sd-scripts.
    lr = None if kwargs.get("relative_step") is True else param_groups[0]["lr"]
    try:
        return cls(param_groups, lr=lr, **kwargs)
    except (TypeError, ValueError) as err:
        raise OptimizerSetupError(f"optimizer: {cls.__name__} refused its settings: {err}") from None


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
