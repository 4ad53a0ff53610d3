"""Saving LoRA checkpoints and training state, and finding the state to resume from."""

from __future__ import annotations

import io
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.atomic import remove_temporaries, write_bytes_atomic
from core.config import SavePrecision
from core.runs import METRICS, trim_metrics

SAVE_DTYPES = {SavePrecision.FLOAT: torch.float32, SavePrecision.FP16: torch.float16,
               SavePrecision.BF16: torch.bfloat16}
STATE_DIR = "state"
CHECKPOINT_DIR = "checkpoints"
_STATE_FILE = re.compile(r"^step-(\d+)\.pt$")


def checkpoint_name(output_name: str, *, epoch: int | None = None, step: int | None = None) -> str:
    """Kohya's names: name-000002.safetensors per epoch, name-step00000500 per step."""
    if epoch is not None:
        return f"{output_name}-{epoch:06d}.safetensors"
    return f"{output_name}-step{step:08d}.safetensors"


def prune_checkpoints(folder: Path, output_name: str, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` intermediate checkpoints (0 keeps all)."""
    if keep_last <= 0 or not folder.is_dir():
        return []
    files = sorted(folder.glob(f"{output_name}-*.safetensors"), key=lambda p: p.stat().st_mtime_ns)
    doomed = files[:-keep_last]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def trainable_state(models: dict[str, torch.nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {key: p.detach().cpu().clone() for key, p in model.named_parameters() if p.requires_grad}
            for name, model in models.items()}


def load_trainable_state(models: dict[str, torch.nn.Module], state: dict[str, dict[str, torch.Tensor]]) -> None:
    for name, model in models.items():
        saved = state.get(name, {})
        params = {key: p for key, p in model.named_parameters() if p.requires_grad}
        missing = sorted(set(params) - set(saved))
        if missing:
            raise ValueError(f"the saved state lacks {len(missing)} LoRA weights of the {name} "
                             f"(e.g. {missing[0]}): it was saved with other network settings")
        with torch.no_grad():
            for key, param in params.items():
                param.copy_(saved[key].to(param.device, param.dtype))


@dataclass
class TrainingState:
    step: int
    epoch: int
    batch_in_epoch: int  # batches of `epoch` already trained (by this process)
    wall_seconds: float
    lora: dict[str, dict[str, torch.Tensor]]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    generator: torch.Tensor
    torch_rng: torch.Tensor
    python_rng: Any
    cuda_rng: list[torch.Tensor] | None = None
    loss_window: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    peak_memory_mb: float = 0.0
    skipped_steps: int = 0  # steps left out for a NaN/inf loss (training.nonfinite_loss = "skip")


def save_state(folder: Path, state: TrainingState, keep: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state.__dict__, buffer)
    path = folder / f"step-{state.step:08d}.pt"
    write_bytes_atomic(path, buffer.getvalue())
    for old in sorted(folder.glob("step-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def latest_state(folder: Path) -> Path | None:
    candidates = sorted(p for p in folder.glob("step-*.pt") if _STATE_FILE.match(p.name))
    return candidates[-1] if candidates else None


def state_step(path: Path) -> int:
    """The step a state file was saved at, from its name (step-00000500.pt)."""
    match = _STATE_FILE.match(path.name)
    if match is None:
        raise ValueError(f"{path.name} is not a training state file")
    return int(match.group(1))


def load_state(path: Path) -> TrainingState:
    data = torch.load(path, map_location="cpu", weights_only=False)
    return TrainingState(**data)


def capture_rng() -> tuple[torch.Tensor, Any, list[torch.Tensor] | None]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), random.getstate(), cuda


def restore_rng(state: TrainingState) -> None:
    torch.set_rng_state(state.torch_rng)
    random.setstate(state.python_rng)
    if state.cuda_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state.cuda_rng)


def tidy_for_resume(run_dir: Path) -> list[str]:
    """Before a run folder is trained further: delete the temporary files of saves that a
    killed process never finished, and the metrics records of steps after the last saved
    state (they are trained again, and one curve must not hold two versions of them).
    Returns what was done, for the log."""
    done = [f"removed {path}, left by an interrupted save"
            for folder in (run_dir, run_dir / CHECKPOINT_DIR, run_dir / STATE_DIR)
            for path in remove_temporaries(folder)]
    state = latest_state(run_dir / STATE_DIR)
    if state is not None:
        dropped = trim_metrics(run_dir / METRICS, state_step(state))
        if dropped:
            done.append(f"dropped {dropped} metrics records after step {state_step(state)} (trained again now)")
    return done
