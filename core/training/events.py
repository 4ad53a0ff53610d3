"""Typed, frozen events the engine emits to a sink. They cross threads and processes as
plain data: the GUI turns them into Qt signals, the CLI prints them, tests collect them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol


@dataclass(frozen=True)
class RunStarted:
    run_dir: str
    name: str
    total_steps: int
    epochs: int
    batches_per_epoch: int
    steps_per_epoch: int
    start_step: int = 0  # > 0 when resuming


@dataclass(frozen=True)
class Status:
    text: str
    phase: str = "training"  # loading, caching, training, saving, sampling, paused


@dataclass(frozen=True)
class PhaseProgress:
    """Progress of a long phase other than training (model load, latent caching)."""

    phase: str
    done: int
    total: int


@dataclass(frozen=True)
class StepMetrics:
    step: int  # optimizer steps done, 1-based
    epoch: int  # 1-based
    total_steps: int
    loss: float
    avg_loss: float  # mean over the last epoch's worth of steps (Kohya's loss/average)
    lr: dict[str, float]  # per param group: "unet", "text_encoder"
    dlr: dict[str, float] = field(default_factory=dict)  # d*lr per group (Prodigy, D-Adaptation)
    memory_allocated_mb: float = 0.0
    memory_reserved_mb: float = 0.0
    memory_peak_mb: float = 0.0
    memory_kind: str = "cuda"  # "cuda" (VRAM) or "rss" (process memory on a CPU run)
    it_per_s: float = 0.0
    images_per_s: float = 0.0
    eta_s: float | None = None
    elapsed_s: float = 0.0
    # memory_peak_mb is the peak of the training phase (since training began; a resumed run
    # includes its earlier sessions), memory_peak_reserved_mb the same for the memory the
    # CUDA allocator reserved (the RSS again on a CPU), memory_run_peak_mb the run's peak so
    # far over every phase (loading and caching can exceed training). See core.training.memory.
    memory_peak_reserved_mb: float = 0.0
    memory_run_peak_mb: float = 0.0
    # With scale_weight_norms, sd-scripts' max-norm figures after this step: keys_scaled,
    # average_key_norm, max_key_norm (TensorBoard: max_norm/<name>); empty otherwise.
    max_norm: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StepSkipped:
    """An optimizer step left out because its loss was NaN or infinite (training.nonfinite_loss
    = "skip"): the weights and the optimizer state are as they were before it."""

    step: int
    epoch: int
    loss: float
    in_a_row: int
    skipped_total: int


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    step: int
    mean_loss: float


@dataclass(frozen=True)
class ValidationMetrics:
    """The validation loss (core.training.validation_loss): the mean loss on the held-out images
    at fixed timesteps and noise, comparable step to step and run to run."""

    step: int
    epoch: int
    loss: float
    best: float  # the lowest validation loss of the run so far, this one included
    images: int  # held-out images evaluated
    when: str  # "step" (every N steps) or "epoch" (at an epoch's end)


@dataclass(frozen=True)
class CheckpointSaved:
    path: str
    step: int
    epoch: int
    kind: str  # "epoch", "step", "manual", "final"
    state_path: str | None = None


@dataclass(frozen=True)
class SampleImage:
    path: str
    prompt: str
    step: int
    epoch: int
    index: int


@dataclass(frozen=True)
class Finished:
    # "completed", "stopped", "cancelled", or "already_complete" (a resume with nothing left
    # to train, which changed nothing)
    reason: str
    run_dir: str
    lora_path: str | None
    steps: int
    epochs: int
    wall_seconds: float
    skipped_steps: int = 0  # steps left out for a NaN/inf loss


@dataclass(frozen=True)
class Failed:
    kind: str  # "oom", "nan", "config", "data", "model", "disk", "error"
    summary: str
    advice: tuple[str, ...]
    traceback: str
    log_path: str | None
    run_dir: str | None
    last_checkpoint: str | None = None


Event = (RunStarted | Status | PhaseProgress | StepMetrics | StepSkipped | EpochMetrics | ValidationMetrics
         | CheckpointSaved | SampleImage | Finished | Failed)


class Sink(Protocol):
    def emit(self, event: Event) -> None: ...


class ListSink:
    """Keeps every event (tests, and the CLI's summary)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


class CallbackSink:
    def __init__(self, callback: Callable[[Event], None]) -> None:
        self._callback = callback

    def emit(self, event: Event) -> None:
        self._callback(event)


class MultiSink:
    def __init__(self, *sinks: Sink) -> None:
        self.sinks = list(sinks)

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            sink.emit(event)
