"""The training data as a torch Dataset whose items are whole bucket batches.

Batches never mix buckets (every image in a batch must have the same size), so the unit
the loader hands out is one batch, in the order core.data.batching.epoch_batches gives for the
epoch. Every random choice for a batch (caption shuffle and dropout, flip, random crop)
comes from a generator seeded by (seed, epoch, batch index) through a string, which
Python hashes the same way in every process: a worker process, a second run with the
same seed and a resumed run all see exactly the same batch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.utils.data

from core.data.batching import epoch_batches
from core.data.caption_augment import process_caption
from core.data.images import random_crop_offset
from core.data.dataset_plan import DatasetPlan
from core.data.latent_cache import LatentCache
from core.data.masks import AlphaMasks, MaskError, mask_tensor, missing_masks, missing_masks_message
from core.data.samples import Sample, load_pixels, samples
from core.data.size_conditioning import training_time_ids

Bucket = tuple[int, int]


class MissingLatents(LookupError):
    """A latent cache was given but lacks a sample's latents: fill it before training."""


@dataclass
class Batch:
    bucket: Bucket  # (w, h)
    keys: list[str]
    captions: list[str]
    loss_weights: torch.Tensor  # [B] float32
    pixels: torch.Tensor | None  # [B, 3, H, W] in [-1, 1]; None when latents come from a cache
    latents: torch.Tensor | None  # [B, C, H/8, W/8] from the cache (C = 4 for SD), else None
    flipped: list[bool]
    # [B, 6] float32 rows (original h, w, crop top, left, target h, w): SDXL's size and crop
    # conditioning as sd-scripts computes it (core.data.size_conditioning). Always filled, as
    # it costs nothing; a family without it ignores it. None only in batches made elsewhere.
    size_conditioning: torch.Tensor | None = None
    # [B, 1, H, W] float32 loss masks in [0, 1] at the bucket's pixel size, cropped and flipped
    # as the images; None when the run has no masked loss.
    masks: torch.Tensor | None = None

    def pin_memory(self) -> Batch:
        """The batch in page-locked memory (the loader calls this with pin_memory=True), so
        its copy to the GPU can run asynchronously (non_blocking=True)."""
        return replace(self, loss_weights=self.loss_weights.pin_memory(),
                       pixels=_pinned(self.pixels), latents=_pinned(self.latents),
                       size_conditioning=_pinned(self.size_conditioning), masks=_pinned(self.masks))


def _pinned(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.pin_memory()


def _members(plan: DatasetPlan) -> dict[Bucket, list[str]]:
    """Like plan.bucket_members(), but naming samples by their index in samples(plan).

    The shuffles in epoch_batches depend only on how many entries there are and where,
    so the batch order is the one plan.bucket_members() gives; indexes keep two subsets
    that list the same file (with different options) apart, where paths would not.
    """
    members: dict[Bucket, list[str]] = {}
    for index, image in enumerate(plan.images):
        members.setdefault(image.bucket, []).extend([str(index)] * image.repeats)
    return members


def batch_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The generator for one batch's random choices, the same in every process."""
    return random.Random(f"{seed}:{epoch}:{index}")


class BucketBatchDataset(torch.utils.data.Dataset):
    """Batch ``index`` of the current epoch, fully augmented; use with batch_size=None.

    Call set_epoch before iterating each epoch (epochs count from 1). An item may also be
    asked for as ``(epoch, index)``: a worker process holds its own copy of the dataset
    for the whole run (persistent workers, see EpochLoader), and the epoch travels with
    each index instead of through set_epoch.
    """

    def __init__(self, plan: DatasetPlan, *, batch_size: int, seed: int,
                 prior_loss_weight: float = 1.0, latent_cache: LatentCache | None = None,
                 masked_loss: bool = False) -> None:
        """``masked_loss``: batches carry each image's mask from its subset's mask folder (an
        alpha_mask subset's images carry theirs with or without it)."""
        self.plan = plan
        self.batch_size = batch_size
        self.seed = seed
        self.latent_cache = latent_cache
        self.samples = samples(plan, prior_loss_weight)
        if latent_cache is not None:
            _check_no_random_crop(self.samples)
        self.masked_loss = masked_loss
        self.masking = masked_loss or any(s.options.alpha_mask for s in self.samples)
        self._alpha_masks = AlphaMasks()
        if masked_loss:
            _check_masks_present(self.samples)
        self._members = _members(plan)
        self.epoch = 0
        self._batches: list[tuple[Bucket, list[str]]] = []
        self.set_epoch(1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._batches = epoch_batches(self._members, self.batch_size, self.seed, epoch)

    def __len__(self) -> int:
        return len(self._batches)

    def __getitem__(self, index: int | tuple[int, int]) -> Batch:
        if isinstance(index, tuple):
            epoch, index = index
            if epoch != self.epoch:
                self.set_epoch(epoch)
        if not 0 <= index < len(self._batches):
            raise IndexError(f"batch {index} out of range: epoch {self.epoch} has "
                             f"{len(self._batches)} batches")
        bucket, ids = self._batches[index]
        rng = batch_rng(self.seed, self.epoch, index)
        chosen = [self.samples[int(i)] for i in ids]
        captions, flipped, offsets = _augment(chosen, rng)
        pixels = latents = None
        if self.latent_cache is None:
            pixels = torch.stack([load_pixels(s, o, f) for s, o, f in zip(chosen, offsets, flipped)])
            trained, scale = pixels, 1
        else:
            latents = torch.stack([self._cached(s, f) for s, f in zip(chosen, flipped)])
            trained, scale = latents, self.latent_cache.downscale
        # The target size is read off what is trained, as sd-scripts does (latents: times 8).
        # The rest needs only the plan (a random crop's offset does not count, as in sd-scripts),
        # so cached latents need nothing stored beside them.
        target = (trained.shape[-1] * scale, trained.shape[-2] * scale)
        masks = None
        if self.masking:
            # Masks are read from their files for every batch, cached latents or not: they are
            # small, and a mask edited between runs can never meet stale latents. An alpha mask
            # is kept once decoded (it costs decoding the whole image), keyed by the file's stamp.
            masks = torch.stack([
                mask_tensor(self._alpha_masks.load(s.record.path, s.record.size, s.options, self.masked_loss),
                            s.assignment, o, f) for s, o, f in zip(chosen, offsets, flipped)])
        size_conditioning = torch.tensor(
            [training_time_ids(s.record.size, s.assignment.bucket, f, target) for s, f in zip(chosen, flipped)],
            dtype=torch.float32)
        return Batch(bucket=bucket, keys=[s.key for s in chosen], captions=captions,
                     loss_weights=torch.tensor([s.loss_weight for s in chosen], dtype=torch.float32),
                     pixels=pixels, latents=latents, flipped=flipped, size_conditioning=size_conditioning,
                     masks=masks)

    def _cached(self, sample: Sample, flipped: bool) -> torch.Tensor:
        assert self.latent_cache is not None
        latents = self.latent_cache.get(self.latent_cache.key(sample, flipped), sample.assignment.bucket)
        if latents is None:
            side = "flipped " if flipped else ""
            raise MissingLatents(f"no usable cached {side}latents for {sample.record.display_path} (missing, "
                                 "damaged or of another shape): fill the latent cache before training")
        return latents


def _augment(chosen: Sequence[Sample], rng: random.Random
             ) -> tuple[list[str], list[bool], list[tuple[int, int] | None]]:
    """Captions, flips and crop offsets of a batch, drawn in a fixed order from ``rng``."""
    captions: list[str] = []
    flipped: list[bool] = []
    offsets: list[tuple[int, int] | None] = []
    for sample in chosen:
        options = sample.options
        # Draw only for the options that are on, as sd-scripts does: a dataset without
        # augmentation consumes no randomness at all.
        flipped.append(options.flip_aug and rng.random() < 0.5)
        offset = None
        if options.random_crop:
            offset = random_crop_offset(sample.assignment.resized, sample.assignment.bucket, rng)
        offsets.append(offset)
        captions.append(process_caption(sample.record.caption, options, rng))
    return captions, flipped, offsets


def _check_no_random_crop(chosen: Sequence[Sample]) -> None:
    for sample in chosen:
        if sample.options.random_crop:
            raise ValueError(f"{sample.record.display_path}: random crop cannot be used with a "
                             "latent cache (the cache holds one fixed crop per image)")


def _check_masks_present(chosen: Sequence[Sample]) -> None:
    """Every image of a subset with a mask folder has its mask (sd-scripts refuses to start
    otherwise too), so a run never stops on a missing mask hours in."""
    by_folder: dict[str, list] = {}
    for sample in chosen:
        if sample.options.mask_dir:
            by_folder.setdefault(sample.options.mask_dir, []).append(sample.record.path)
    for folder, paths in by_folder.items():
        missing = missing_masks(sorted(set(paths)), folder)
        if missing:
            raise MaskError(missing_masks_message(missing, folder))


def _pass_through(batch: Batch) -> Batch:
    # A module-level function, not a lambda: worker processes started by "spawn"
    # (Windows, macOS) must pickle the collate function.
    return batch


class _EpochOrder(torch.utils.data.Sampler):
    """(epoch, index) pairs of the epoch being trained; changed between epochs."""

    def __init__(self) -> None:
        self.items: list[tuple[int, int]] = []

    def __iter__(self):  # noqa: ANN204
        return iter(list(self.items))

    def __len__(self) -> int:
        return len(self.items)


class EpochLoader:
    """One loader for a whole run: ``epoch(n, indices)`` yields that epoch's batches, in the
    order of ``indices``, exactly as the dataset gives them in this process.

    With ``num_workers`` > 0, worker processes decode and resize images while the GPU
    trains. They start once and live for the run (starting a process costs seconds under
    Windows' and macOS's spawn, where each imports torch again); each works on its own copy
    of the dataset, which is why the epoch travels with every index. ``pin_memory`` (CUDA
    only) puts batches in page-locked memory so the step's non-blocking copies overlap.
    Call close() when done: it stops the workers.
    """

    def __init__(self, dataset: BucketBatchDataset, num_workers: int = 0, pin_memory: bool = False) -> None:
        self.dataset = dataset
        self._order = _EpochOrder()
        workers = max(0, num_workers)
        self._loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, shuffle=False, sampler=self._order, num_workers=workers,
            collate_fn=_pass_through, pin_memory=pin_memory, persistent_workers=workers > 0,
            prefetch_factor=2 if workers > 0 else None,
            multiprocessing_context=worker_start_method() if workers > 0 else None)
        self._iterator = None

    def epoch(self, epoch: int, indices: Sequence[int]):  # noqa: ANN201 - Iterator[Batch]
        self.dataset.set_epoch(epoch)
        self._order.items = [(epoch, int(index)) for index in indices]
        self._iterator = iter(self._loader)
        return self._iterator

    def close(self) -> None:
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def worker_start_method() -> str | None:
    """How loader workers start: the platform's way, except that a fork from a thread other
    than the main one (the desktop app trains in one) copies a process whose other threads
    may hold locks (Qt's, the allocator's) that the child then waits on for ever; such a
    process spawns its workers, as Windows and macOS always do."""
    import multiprocessing
    import threading

    if threading.current_thread() is not threading.main_thread() and multiprocessing.get_start_method() == "fork":
        return "spawn"
    return None


def loader_workers(configured: int, latents_in_memory: bool, cpus: int | None) -> int:
    """Worker processes for a run: none when latents come from memory (there is nothing to
    decode, and each worker would get a copy of every latent), never more than the CPUs
    less one for the training process."""
    if latents_in_memory or configured <= 0:
        return 0
    return max(0, min(configured, (cpus or 1) - 1))
