"""Saving what a run has learnt: LoRA files (checkpoints and the final one) with Kohya's
metadata, the training state a run resumes from, and the pruning of old checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from core.config.schema import TrainConfig
from core.data.dataset_plan import DatasetPlan
from core.training.active_run_folder import ActiveRunFolder
from core.training.checkpoint import (CHECKPOINT_DIR, SAVE_DTYPES, STATE_DIR, TrainingState, capture_rng,
                                      checkpoint_name, prune_checkpoints, save_state, trainable_state)
from core.training.events import CheckpointSaved
from core.training.faults import NonFiniteGuard
from core.training.memory import PhasePeaks
from core.training.progress import Progress
from core.training.run_calls import RunCalls
from core.training.setup import Network

log = logging.getLogger("lorakiln.run")


class Checkpointer:
    def __init__(self, config: TrainConfig, plan: DatasetPlan, network: Network, optimizer: Any, lr_scheduler: Any,
                 generator: torch.Generator, accelerator: Any, memory: PhasePeaks, guard: NonFiniteGuard,
                 progress: Progress, folder: ActiveRunFolder, calls: RunCalls, *, session_id: str,
                 started_at: float) -> None:
        self.config = config
        self.plan = plan
        self.network = network
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.generator = generator
        self.accelerator = accelerator
        self.memory = memory
        self.guard = guard
        self.progress = progress
        self.folder = folder
        self.calls = calls
        self.session_id = session_id
        self.started_at = started_at

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def save_lora(self, path: Path, kind: str) -> str:
        from core.kohya.lora_format import to_kohya_state_dict
        from core.kohya.metadata import build_metadata, save_lora_file

        self.calls.ensure_run_dir()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.calls.status(f"saving {path.name}…", "saving")
        config, progress = self.config, self.progress
        tensors = to_kohya_state_dict(self.network.handles, self.network.family,
                                      SAVE_DTYPES[config.output.save_precision])
        metadata = build_metadata(config, self.plan, epoch=progress.epoch, step=progress.step, session_id=self.session_id,
                                  training_started_at=self.started_at, training_finished_at=None,
                                  model_name=self.network.components.source, title=config.output.output_name,
                                  num_processes=self.accelerator.num_processes, family=self.network.family)
        save_lora_file(path, tensors, metadata)
        progress.last_checkpoint = str(path)
        log.info("saved %s (%s)", path, kind)
        self.calls.status("training", "training")
        return str(path)

    def state(self) -> TrainingState:
        torch_rng, python_rng, cuda_rng = capture_rng()
        progress, memory = self.progress, self.memory
        return TrainingState(
            step=progress.step, epoch=progress.epoch, batch_in_epoch=progress.batch_in_epoch,
            wall_seconds=progress.wall_seconds(),
            lora=trainable_state(self.network.trained), optimizer=self.optimizer.state_dict(),
            scheduler=self.lr_scheduler.state_dict(), generator=self.generator.get_state(), torch_rng=torch_rng,
            python_rng=python_rng, cuda_rng=cuda_rng, loss_window=progress.window.values,
            epoch_losses=list(progress.epoch_losses), peak_memory_mb=memory.overall()[0],
            skipped_steps=self.guard.skipped, peak_by_phase=memory.by_phase(), memory_kind=memory.kind,
            grad_scaler=self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None,
            best_validation_loss=progress.best_validation_loss, best_validation_step=progress.best_validation_step)

    def save_state(self) -> str:
        assert self.folder.path is not None
        return str(save_state(self.folder.path / STATE_DIR, self.state()))

    def save_checkpoint(self, kind: str, with_state: bool) -> None:
        """A checkpoint ("epoch", "step" or "manual"), and the state with it when asked."""
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            return
        output, progress = self.config.output, self.progress
        assert self.folder.path is not None
        folder = self.folder.path / CHECKPOINT_DIR
        folder.mkdir(exist_ok=True)
        name = checkpoint_name(output.output_name, epoch=progress.epoch) if kind == "epoch" else \
            checkpoint_name(output.output_name, step=progress.step)
        path = self.save_lora(folder / name, kind)
        state_path = self.save_state() if with_state else None
        prune_checkpoints(folder, output.output_name, output.keep_last_n)
        self.calls.record({"type": "checkpoint", "path": path, "step": progress.step, "epoch": progress.epoch,
                           "kind": kind})
        self.calls.emit(CheckpointSaved(path, progress.step, progress.epoch, kind, state_path))

    def save_final(self, reason: str) -> str | None:
        """The final LoRA (and the state, for a stopped run or when asked) of a run that
        completed or was stopped; None on processes other than the main one."""
        # Every process meets here (only the main one has a run folder and saves), so
        # none leaves while the others are still inside a collective operation.
        self.accelerator.wait_for_everyone()
        run_dir = self.folder.path
        if not self.is_main or run_dir is None:
            return None
        lora_path = self.save_lora(run_dir / f"{self.config.output.output_name}.safetensors", "final")
        state_path = None
        if reason == "stopped" or self.config.output.save_state:
            state_path = self.save_state()
        self.calls.emit(CheckpointSaved(lora_path, self.progress.step, self.progress.epoch, "final", state_path))
        return lora_path
