"""Batch, step and epoch arithmetic, and how regularisation images are registered.

The numbers here are the ones sd-scripts trains with (batches never mix buckets, so each
bucket rounds up on its own), so the step count a user sees before training is the one
the run reaches, and a config moved over from kohya_ss gives the same plan.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

Bucket = tuple[int, int]


@dataclass(frozen=True)
class PlannedImage:
    """The little the batch maths needs to know about one image."""

    key: str  # any unique id (the caller uses the path)
    bucket: Bucket
    repeats: int
    is_reg: bool


def _ceil_div(a: int, b: int) -> int:
    # Integer ceiling: float division would misround for large counts.
    return -(-a // b)


def register_regularisation(train_images_with_repeats: int,
                            reg: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """Which reg images train, and how often, as sd-scripts' DreamBoothDataset decides.

    The first pass takes every reg image with its own repeats; later passes add one repeat
    at a time, round-robin, until the reg images (with repeats) at least match the
    training images. Images the loop never reaches are not used at all.
    Returns (key, effective repeats) in registration order.
    """
    if train_images_with_repeats <= 0 or not reg:
        return []
    keys: list[str] = []
    repeats: list[int] = []
    n = 0
    first_loop = True
    while n < train_images_with_repeats:
        for i, (key, own_repeats) in enumerate(reg):
            if first_loop:
                keys.append(key)
                repeats.append(own_repeats)
                n += own_repeats
            else:
                repeats[i] += 1
                n += 1
            if n >= train_images_with_repeats:
                break
        first_loop = False
    return list(zip(keys, repeats))


def bucket_counts(images: Iterable[PlannedImage]) -> dict[Bucket, int]:
    """Entries per bucket, each image counted once per repeat (as it enters the bucket)."""
    counts: dict[Bucket, int] = {}
    for image in images:
        if image.repeats < 0:
            raise ValueError(f"{image.key}: repeats must not be negative, got {image.repeats}")
        if image.repeats:
            counts[image.bucket] = counts.get(image.bucket, 0) + image.repeats
    return counts


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")


def batches_per_epoch(counts: Mapping[Bucket, int], batch_size: int) -> int:
    """Sum of ceil(n_b / batch_size): every bucket's last batch may be short."""
    _check_batch_size(batch_size)
    total = 0
    for bucket, n in counts.items():
        if n < 0:
            raise ValueError(f"bucket {bucket} has a negative count ({n})")
        total += _ceil_div(n, batch_size)
    return total


@dataclass(frozen=True)
class StepPlan:
    batches_per_epoch: int
    steps_per_epoch: int  # optimizer steps per epoch per process
    epochs: int
    max_train_steps: int
    stops_mid_epoch: bool  # the last epoch is cut short by max_train_steps


def plan_steps(batches_per_epoch: int, *, epochs: int | None = None,
               max_train_steps: int | None = None, grad_accum: int = 1,
               num_processes: int = 1) -> StepPlan:
    """Epochs and optimizer steps from the batch count, with exactly one of them fixed.

    Each process sees its share of the batches and steps once per grad_accum batches,
    so an epoch is ceil(batches / (processes * grad_accum)) steps; sd-scripts computes the
    same number as ceil(ceil(batches / processes) / grad_accum), which is equal.
    """
    if (epochs is None) == (max_train_steps is None):
        raise ValueError("give exactly one of epochs or max_train_steps")
    if batches_per_epoch < 0:
        raise ValueError(f"batches per epoch must not be negative, got {batches_per_epoch}")
    if batches_per_epoch == 0:
        raise ValueError("there are no batches to train on: the dataset has no images "
                         "(with repeats) after bucketing")
    if grad_accum < 1:
        raise ValueError(f"gradient accumulation steps must be at least 1, got {grad_accum}")
    if num_processes < 1:
        raise ValueError(f"number of processes must be at least 1, got {num_processes}")
    steps_per_epoch = _ceil_div(batches_per_epoch, num_processes * grad_accum)
    if epochs is not None:
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
        return StepPlan(batches_per_epoch, steps_per_epoch, epochs,
                        epochs * steps_per_epoch, stops_mid_epoch=False)
    assert max_train_steps is not None
    if max_train_steps < 1:
        raise ValueError(f"max train steps must be at least 1, got {max_train_steps}")
    return StepPlan(batches_per_epoch, steps_per_epoch,
                    _ceil_div(max_train_steps, steps_per_epoch), max_train_steps,
                    stops_mid_epoch=max_train_steps % steps_per_epoch != 0)


def epoch_batches(bucket_members: Mapping[Bucket, Sequence[str]], batch_size: int,
                  seed: int, epoch: int) -> list[tuple[Bucket, list[str]]]:
    """The batches of one epoch, in training order, reproducible from seed and epoch.

    One Random drives both shuffles so the whole order follows from seed + epoch alone:
    a resumed run replays the same epoch the same way. Members already hold one entry per
    repeat; the input is not modified.
    """
    _check_batch_size(batch_size)
    rng = random.Random(seed + epoch)
    batches: list[tuple[Bucket, list[str]]] = []
    for bucket in sorted(bucket_members):
        members = list(bucket_members[bucket])
        rng.shuffle(members)
        for start in range(0, len(members), batch_size):
            batches.append((bucket, members[start:start + batch_size]))
    rng.shuffle(batches)
    return batches
