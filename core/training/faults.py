"""What the engine does when a step goes wrong: a NaN or infinite loss (stop, or skip the
step without touching the weights), and giving memory back after a failed run so the next
run in the same process starts clean."""

from __future__ import annotations

import gc
import math
from pathlib import Path

import torch

from core.config.schema import NonFinitePolicy, TrainingParams
from core.training.errors import NonFiniteLoss


class NonFiniteGuard:
    """Checks each micro-batch's loss. With the "stop" policy the first bad loss raises
    ``NonFiniteLoss``; with "skip" the optimizer step it belongs to is left out, and
    ``limit`` bad steps in a row raise anyway: by then the weights themselves are likely
    broken and skipping only burns time."""

    def __init__(self, training: TrainingParams, skipped_before: int = 0) -> None:
        self.policy = training.nonfinite_loss
        self.limit = training.nonfinite_skip_limit
        self.skipped = skipped_before  # over the whole run, earlier sessions of a resumed run included
        self.in_a_row = 0
        self.bad_value: float | None = None  # the first bad loss of the step being accumulated

    def accept(self, step: int, value: float, images: list[str]) -> bool:
        """True when ``value`` may be back-propagated; False when this optimizer step must be
        skipped. Raises ``NonFiniteLoss`` when the run has to stop."""
        if math.isfinite(value):
            return self.bad_value is None
        if self.policy is NonFinitePolicy.STOP:
            raise NonFiniteLoss(step, value, _names(images))
        if self.in_a_row + 1 >= self.limit:
            raise NonFiniteLoss(step, value, _names(images), in_a_row=self.in_a_row + 1)
        if self.bad_value is None:
            self.bad_value = value
        return False

    @property
    def must_check_before_step(self) -> bool:
        """Whether the loss must be read before the optimizer step is queued. Skipping needs
        to know first; stopping does not: the stopped run's weights are never saved, so its
        last step may run and the loss be read after it, sparing a wait on the GPU."""
        return self.policy is not NonFinitePolicy.STOP

    @property
    def step_is_bad(self) -> bool:
        return self.bad_value is not None

    def mark_bad_elsewhere(self, bad_somewhere: bool) -> None:
        """Another process of a multi-GPU run had a bad loss in this step: it is skipped here too."""
        if bad_somewhere and self.bad_value is None:
            self.bad_value = math.nan

    def end_step(self) -> float | None:
        """Called once per optimizer step; returns the bad loss when the step was skipped."""
        bad, self.bad_value = self.bad_value, None
        if bad is None:
            self.in_a_row = 0
        else:
            self.in_a_row += 1
            self.skipped += 1
        return bad


def _names(images: list[str]) -> tuple[str, ...]:
    return tuple(Path(image).name for image in images)


def release_memory() -> None:
    """Drop unreachable tensors (a failed step's activations sit in reference cycles through
    its traceback) and hand cached CUDA blocks back to the driver, so a run after an
    out-of-memory failure gets the whole card again.

    A host that has turned automatic collection off (the GUI, which collects in its own
    thread so that no Qt object is ever freed in the training thread) collects and empties
    the cache itself once the run has ended; collecting here would undo that."""
    if not gc.isenabled():
        return
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
