"""Latents encoded once by the VAE and kept in memory or on disk, instead of every step.

A cache entry's key is a hash of everything its latents depend on: the file (path,
modification time and size as scanned), how it was bucketed (bucket, resized size, crop
box), whether it was mirrored, and which VAE encoded it. Change any of those and the key
changes, so stale latents are never used; they are simply not found. A cache file that
cannot be read (cut short by a crash, a full disk) counts as missing and is encoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import safetensors.torch
import torch
from safetensors import safe_open

from core.atomic import write_bytes_atomic
from core.pipeline import Sample, load_pixels

MEMORY = "memory"
DISK = "disk"
# Part of every key: a change to how pixels are made (loader, resampling) must bump it.
_FORMAT = "lorakiln-latents-1"
_TENSOR = "latents"

Encode = Callable[[torch.Tensor], torch.Tensor]


class CacheCancelled(Exception):
    """The caller's ``cancelled()`` returned True while latents were being encoded."""


class LatentCache:
    def __init__(self, mode: str, folder: Path | None, vae_id: str) -> None:
        if mode not in (MEMORY, DISK):
            raise ValueError(f"latent cache mode must be '{MEMORY}' or '{DISK}', got '{mode}'")
        if mode == DISK and folder is None:
            raise ValueError("a disk latent cache needs a folder")
        self.mode = str(mode)
        self.folder = Path(folder) if folder is not None else None
        self.vae_id = vae_id
        self._memory: dict[str, torch.Tensor] = {}

    def key(self, sample: Sample, flipped: bool) -> str:
        record, assignment = sample.record, sample.assignment
        material = [_FORMAT, os.path.abspath(record.path), record.info.mtime_ns, record.info.file_size,
                    list(assignment.bucket), list(assignment.resized), list(assignment.crop),
                    bool(flipped), self.vae_id]
        return hashlib.sha256(json.dumps(material).encode("utf-8")).hexdigest()

    def path(self, key: str) -> Path:
        """Where a disk cache keeps ``key``: sharded by its first two hex digits."""
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        if self.mode == MEMORY:
            return self._memory.get(key)
        try:
            data = self.path(key).read_bytes()
            return safetensors.torch.load(data)[_TENSOR]
        except (OSError, KeyError, safetensors.SafetensorError):
            return None

    def put(self, key: str, latents: torch.Tensor) -> None:
        if self.mode == MEMORY:
            self._memory[key] = latents
            return
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, safetensors.torch.save({_TENSOR: latents}))

    def contains(self, key: str) -> bool:
        """Whether ``key`` has readable latents; on disk this reads only the file's header."""
        if self.mode == MEMORY:
            return key in self._memory
        try:
            # safe_open checks that the header is whole and the file covers every tensor
            # it lists, which catches truncation without reading the data.
            with safe_open(str(self.path(key)), framework="pt") as handle:
                return _TENSOR in handle.keys()
        except (OSError, safetensors.SafetensorError):
            return False

    def fill(self, samples: Iterable[Sample], encode: Encode, *, batch_size: int = 4,
             flip_aug_keys: bool, cancelled: Callable[[], bool] | None = None,
             progress: Callable[[int, int], None] | None = None) -> int:
        """Encode every missing (sample, flipped) entry; return how many were encoded.

        Mirrored entries are made for samples with flip_aug when ``flip_aug_keys`` is set.
        ``encode`` maps pixels [B, 3, H, W] in [-1, 1] to latents [B, C, h, w] (the VAE's
        encode and scaling, under no_grad); samples of one bucket are batched together.
        """
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        batches = _batches(self._missing(samples, flip_aug_keys), batch_size)
        total = sum(len(batch) for batch in batches)
        done = 0
        _report(progress, done, total)
        for batch in batches:
            if cancelled is not None and cancelled():
                raise CacheCancelled("latent caching cancelled")
            self._encode_batch(batch, encode)
            done += len(batch)
            _report(progress, done, total)
        return done

    def _missing(self, samples: Iterable[Sample], flip_aug_keys: bool
                 ) -> list[tuple[str, Sample, bool]]:
        missing: list[tuple[str, Sample, bool]] = []
        seen: set[str] = set()
        for sample in samples:
            if sample.options.random_crop:
                raise ValueError(f"{sample.record.display_path}: random crop cannot be used with a "
                                 "latent cache (the cache holds one fixed crop per image)")
            for flipped in (False, True) if flip_aug_keys and sample.options.flip_aug else (False,):
                key = self.key(sample, flipped)
                if key not in seen and not self.contains(key):
                    missing.append((key, sample, flipped))
                seen.add(key)
        return missing

    def _encode_batch(self, batch: list[tuple[str, Sample, bool]], encode: Encode) -> None:
        pixels = torch.stack([load_pixels(sample, None, flipped) for _, sample, flipped in batch])
        latents = encode(pixels)
        if not isinstance(latents, torch.Tensor) or latents.shape[0] != len(batch):
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"encode returned {shape} for {len(batch)} images")
        for index, (key, _, _) in enumerate(batch):
            # A copy of its own per entry: a view would keep the whole batch alive, and
            # safetensors needs contiguous CPU tensors. The dtype stays as encode made it.
            self.put(key, latents[index].detach().to("cpu", copy=True).contiguous())


def _batches(missing: list[tuple[str, Sample, bool]], batch_size: int
             ) -> list[list[tuple[str, Sample, bool]]]:
    """Entries grouped by bucket (images of one size stack), in bucket order, then chunked."""
    by_bucket: dict[tuple[int, int], list[tuple[str, Sample, bool]]] = {}
    for entry in missing:
        by_bucket.setdefault(entry[1].assignment.bucket, []).append(entry)
    batches = []
    for bucket in sorted(by_bucket):
        entries = by_bucket[bucket]
        batches += [entries[i:i + batch_size] for i in range(0, len(entries), batch_size)]
    return batches


def _report(progress: Callable[[int, int], None] | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)
