"""Deciding whether a run folder can be trained further, before anything in it changes.

A resume reads the latest saved state and checks it against the configuration (the run's
own config.toml with any ``--set`` changes) and the model it builds. Every refusal happens
before the engine writes to the folder, so a refused resume leaves the run exactly as it
was: its summary, LoRA, metrics and log.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from core.config.schema import TrainConfig
from core.training.checkpoint import (STATE_DIR, StateError, TrainingState, latest_state, load_state,
                                      load_trainable_state)


class ResumeRefused(ValueError):
    """The run folder cannot be trained further as asked; nothing in it was changed."""


class AlreadyComplete(Exception):
    """The saved state is at or past the last step of the plan: there is nothing to train."""

    def __init__(self, run_dir: Path, state: TrainingState, total_steps: int, lora_path: Path | None) -> None:
        lora = f"; its LoRA is {lora_path}" if lora_path else ""
        super().__init__(f"the run {run_dir} is already complete: its saved state is at step {state.step} and "
                         f"the plan has {total_steps} steps{lora}. Nothing was trained or changed. To train "
                         "it further, resume with more epochs or steps (--set training.max_train_epochs=N).")
        self.run_dir = run_dir
        self.state = state
        self.total_steps = total_steps
        self.lora_path = lora_path


def read_resume_state(run_dir: Path) -> TrainingState:
    """The latest saved state of ``run_dir``, or ResumeRefused saying why there is none."""
    path = latest_state(run_dir / STATE_DIR)
    if path is None:
        raise ResumeRefused(f"{run_dir}: no saved training state to resume from (state is saved when a run "
                            "is stopped, and at checkpoints with output.save_state on). Nothing was changed; "
                            "to train this configuration again, start a new run from its config.toml.")
    try:
        return load_state(path)
    except StateError as error:
        raise ResumeRefused(str(error)) from None


def check_not_complete(run_dir: Path, state: TrainingState, total_steps: int, output_name: str) -> None:
    if state.step >= total_steps:
        final = run_dir / f"{output_name}.safetensors"
        raise AlreadyComplete(run_dir, state, total_steps, final if final.is_file() else None)


def changed_settings(run_dir: Path, config: TrainConfig) -> list[str]:
    """The settings (group.field) that differ from the run's saved config.toml."""
    from core.config.presets import PresetError, load_preset
    from core.training.run_folder import CONFIG

    try:
        saved = load_preset(run_dir / CONFIG).config
    except PresetError:
        return []
    before, now = _flat(dataclasses.asdict(saved)), _flat(dataclasses.asdict(config))
    return sorted(key for key in now if before.get(key) != now[key])


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def apply_state(state: TrainingState, trained: dict[str, torch.nn.Module], optimizer: Any, scheduler: Any,
                generator: torch.Generator, changed: list[str], run_dir: Path, scaler: Any = None) -> None:
    """Load the saved LoRA weights, optimizer, schedule and data order into the freshly built
    run, and fp16's loss scale into ``scaler`` (a GradScaler, or None when the run has none);
    ResumeRefused, naming the changed settings, when they do not fit it."""
    because = (f" The settings changed from the run's own ({', '.join(changed)}) do not fit the saved state; "
               "resume without those changes, or start a new run with them.") if changed else ""
    try:
        load_trainable_state(trained, state.lora)
        _check_optimizer_fits(optimizer, state.optimizer)
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        generator.set_state(state.generator)
        # A state from an fp32 / bf16 run leaves a new fp16 run's scaler at its start, and a
        # run resumed in another precision has no scaler for a saved scale.
        if scaler is not None and state.grad_scaler is not None:
            scaler.load_state_dict(state.grad_scaler)
    except (ValueError, KeyError, RuntimeError, TypeError, IndexError) as error:
        detail = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise ResumeRefused(f"{run_dir}: the saved training state cannot be loaded into this run ({detail}). "
                            f"Nothing was changed.{because}") from None


def _check_optimizer_fits(optimizer: Any, saved: dict[str, Any]) -> None:
    """torch checks the parameter counts only; another optimizer's settings would load
    without complaint and fail (or silently misbehave) at the first step."""
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(optimizer.param_groups):
        raise ValueError("the saved optimizer has a different number of parameter groups")
    for number, (now, before) in enumerate(zip(optimizer.param_groups, groups)):
        if not isinstance(before, dict):
            raise ValueError("the saved optimizer state is malformed")
        if set(now) - {"params"} != set(before) - {"params"}:
            raise ValueError(f"the saved optimizer state is of another optimizer (group {number} has the "
                             f"settings {', '.join(sorted(set(before) - {'params'}))})")
