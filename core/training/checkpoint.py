"""Saving LoRA checkpoints and training state, and finding the state to resume from."""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from core.system.atomic import remove_temporaries, write_bytes_atomic
from core.config.schema import SavePrecision
from core.training.run_folder import METRICS, DamagedLines, trim_metrics
from core.training.state_file import StateFileError, read_state_file, write_state_bytes

SAVE_DTYPES = {SavePrecision.FLOAT: torch.float32, SavePrecision.FP16: torch.float16,
               SavePrecision.BF16: torch.bfloat16}
STATE_DIR = "state"
CHECKPOINT_DIR = "checkpoints"
# step-00000500.safetensors; step-00000500.pt from versions that pickled the state (read
# without running code, see load_state).
_STATE_FILE = re.compile(r"^step-(\d+)\.(safetensors|pt)$")


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
    # fp16's loss scaler (torch.amp.GradScaler.state_dict()); None in fp32 / bf16 and in
    # states saved before it was kept.
    grad_scaler: dict[str, Any] | None = None
    # The run's peaks by phase and their kind (core.training.memory), so a resumed run keeps
    # them; absent from states saved before they were recorded.
    peak_by_phase: dict[str, dict[str, float]] | None = None
    memory_kind: str | None = None
    # The whole run's lowest validation loss and its step, so a resumed run's best is not only
    # its own session's; None without validation and in states saved before it was kept.
    best_validation_loss: float | None = None
    best_validation_step: int | None = None


class StateError(ValueError):
    """A training state file that cannot be used; the message names the file."""


def save_state(folder: Path, state: TrainingState, keep: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{state.step:08d}.safetensors"
    write_bytes_atomic(path, write_state_bytes(state.__dict__))
    for old in state_files(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def state_files(folder: Path) -> list[Path]:
    """The state files in ``folder``, oldest step first (at one step, .safetensors last)."""
    if not folder.is_dir():
        return []
    found = [(state_step(p), p.suffix == ".safetensors", p) for p in folder.iterdir() if _STATE_FILE.match(p.name)]
    return [path for _, _, path in sorted(found)]


def latest_state(folder: Path) -> Path | None:
    candidates = state_files(folder)
    return candidates[-1] if candidates else None


def how_to_continue(run_dir: str | Path | None) -> str:
    """What a person can do with a run that ended early: resume it when it saved a state,
    otherwise train its configuration again."""
    try:
        state = latest_state(Path(run_dir) / STATE_DIR) if run_dir else None
    except (OSError, ValueError):
        state = None
    if state is not None:
        return f'resume it from step {state_step(state)}: lorakiln train --resume "{run_dir}"'
    if run_dir:
        return (f'it saved no training state, so it cannot be resumed: train it again with '
                f'lorakiln train "{Path(run_dir) / "config.toml"}" (turn on output.save_state to make runs resumable)')
    return "it saved nothing: add it to the queue again"


def state_step(path: Path) -> int:
    """The step a state file was saved at, from its name (step-00000500.safetensors)."""
    match = _STATE_FILE.match(path.name)
    if match is None:
        raise ValueError(f"{path.name} is not a training state file")
    return int(match.group(1))


def load_state(path: Path) -> TrainingState:
    """The state saved in ``path``. Nothing in the file can run code: the safetensors format
    holds data only, and an older pickled .pt is read with PyTorch's weights-only loader,
    which refuses every Python object that is not plain data."""
    try:
        data = read_state_file(path) if path.suffix == ".safetensors" else _load_legacy(path)
    except StateFileError as error:
        raise StateError(str(error)) from None
    return _as_state(path, data)


def _load_legacy(path: Path) -> Any:
    import pickle
    import stat

    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise StateError(f"{path}: not a regular file, so it is not read as training state")
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's message advises loading unsafely; a file from elsewhere must never be.
        raise StateError(f"{path}: this state file holds Python objects besides training data, and "
                         "loading them could run code, so it was not loaded. Nothing was changed. Resume "
                         "only from state files LoRA Kiln saved; otherwise train the run again from its "
                         "config.toml") from None
    except StateError:
        raise
    except Exception as error:  # noqa: BLE001 - zip, pickle and storage errors: a damaged file
        first_line = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise StateError(f"{path}: not a readable training state file; it is damaged or cut short "
                         f"({first_line})") from None


_REQUIRED = {f.name for f in fields(TrainingState) if f.default is dataclasses.MISSING
             and f.default_factory is dataclasses.MISSING}


def _as_state(path: Path, data: Any) -> TrainingState:
    if not isinstance(data, dict):
        raise StateError(f"{path}: a damaged training state file (it holds no state record)")
    known = {f.name for f in fields(TrainingState)}
    missing = sorted(_REQUIRED - set(data))
    if missing:
        raise StateError(f"{path}: a damaged or foreign training state file (it lacks {', '.join(missing)})")
    state = TrainingState(**{k: v for k, v in data.items() if k in known})
    checks = [("step", int), ("epoch", int), ("batch_in_epoch", int), ("lora", dict), ("optimizer", dict),
              ("scheduler", dict), ("generator", torch.Tensor), ("torch_rng", torch.Tensor)]
    for name, kind in checks:
        value = getattr(state, name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise StateError(f"{path}: a damaged training state file ({name} is a {type(value).__name__})")
    if state.grad_scaler is not None and not isinstance(state.grad_scaler, dict):
        raise StateError(f"{path}: a damaged training state file (grad_scaler is a {type(state.grad_scaler).__name__})")
    if state.step < 0 or state.epoch < 1 or state.batch_in_epoch < 0:
        raise StateError(f"{path}: a damaged training state file (step {state.step}, epoch {state.epoch})")
    return state


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
        damaged = DamagedLines()
        dropped = trim_metrics(run_dir / METRICS, state_step(state), damaged)
        if dropped:
            done.append(f"dropped {dropped} metrics records after step {state_step(state)} (trained again now)")
        if damaged.count:
            done.append(f"{damaged.describe()} (kept as they were)")
    return done
