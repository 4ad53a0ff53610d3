"""Latents encoded once by the VAE and kept in memory or on disk, instead of every step.

A cache entry's key is a hash of everything its latents depend on: the file (path,
modification time and size as scanned), how it was bucketed (bucket, resized size, crop
box), whether it was mirrored, and which VAE encoded it. Change any of those and the key
changes, so stale latents are never used; they are simply not found.
Nothing else is stored beside the latents: SDXL's size and crop conditioning follows from
the plan alone (the image's size and bucket, see core.data.size_conditioning).

An entry found on disk is trusted only after checks that cost no more than its header:
a regular file (a FIFO or device is never opened: opening a FIFO for reading waits for a
writer for ever), a whole safetensors file holding exactly one float tensor of the shape
its bucket gives, (latent channels, height / 8, width / 8). Anything else (cut short by a
crash or a full disk, replaced, from another VAE) counts as missing: it is encoded again
and overwritten, and the count is logged. Values are not checked for NaN: a VAE that makes
NaN makes them again, and the non-finite-loss guard names those images with its advice.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import stat
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import safetensors.torch
import torch

from core.system.atomic import write_bytes_atomic
from core.data.samples import Sample, load_pixels

MEMORY = "memory"
DISK = "disk"
# Part of every key: a change to how pixels are made (loader, resampling) must bump it.
_FORMAT = "lorakiln-latents-1"
_TENSOR = "latents"
# How much smaller than the image its latents are, per side: 8 for every SD-style VAE.
VAE_DOWNSCALE = 8
# Bytes per value of the dtypes a latent may be stored in.
_FLOAT_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
# One tensor's header is under 200 bytes; a larger one is not ours.
_MAX_HEADER = 64 * 1024
# Bounds an entry's size while the channel count is not known yet (SD has 4, Flux 16).
_MOST_CHANNELS = 64

Bucket = tuple[int, int]
Encode = Callable[[torch.Tensor], torch.Tensor]

log = logging.getLogger("lorakiln.latents")


class CacheCancelled(Exception):
    """The caller's ``cancelled()`` returned True while latents were being encoded."""


class _BadEntry(Exception):
    """A file stands at an entry's path but cannot be trusted; the message says why."""


class LatentCache:
    def __init__(self, mode: str, folder: Path | None, vae_id: str, *,
                 latent_channels: int | None = None, downscale: int = VAE_DOWNSCALE) -> None:
        """``latent_channels``: how many channels the VAE's latents have (4 for SD); None
        learns it from the first latents this cache encodes, and until then any count passes."""
        if mode not in (MEMORY, DISK):
            raise ValueError(f"latent cache mode must be '{MEMORY}' or '{DISK}', got '{mode}'")
        if mode == DISK and folder is None:
            raise ValueError("a disk latent cache needs a folder")
        self.mode = str(mode)
        self.folder = Path(folder) if folder is not None else None
        self.vae_id = vae_id
        self.latent_channels = latent_channels
        self.downscale = downscale
        self.bad_entries = 0  # entries the last fill found unusable and encoded again
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

    def expected_shape(self, bucket: Bucket) -> tuple[int | None, int, int]:
        """(channels, height, width) of one image's latents in ``bucket`` = (w, h);
        channels is None while not known."""
        width, height = bucket
        return self.latent_channels, height // self.downscale, width // self.downscale

    def get(self, key: str, bucket: Bucket | None = None) -> torch.Tensor | None:
        """The latents of ``key``, or None when missing or unusable. With ``bucket`` their
        shape must be the bucket's; without it any 3-dimensional float tensor passes."""
        if self.mode == MEMORY:
            latents = self._memory.get(key)
            if latents is None or _problem(list(latents.shape), latents.is_floating_point(),
                                           self._shape_for(bucket)):
                return None
            return latents
        try:
            data = _read_entry(self.path(key), self._shape_for(bucket), whole=True)
            return None if data is None else safetensors.torch.load(data)[_TENSOR]
        except (_BadEntry, KeyError, safetensors.SafetensorError):
            return None

    def put(self, key: str, latents: torch.Tensor) -> None:
        if self.mode == MEMORY:
            self._memory[key] = latents
            return
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        _clear_folder_at(target)
        # The rename replaces whatever else stands there (a FIFO, a link, a damaged file).
        write_bytes_atomic(target, safetensors.torch.save({_TENSOR: latents}))

    def contains(self, key: str, bucket: Bucket | None = None) -> bool:
        """Whether ``key`` has usable latents (of ``bucket``'s shape when given); on disk this
        reads only the file's header."""
        return self._state(key, bucket)[0] == "ok"

    def _state(self, key: str, bucket: Bucket | None) -> tuple[str, str]:
        """("ok" | "missing" | "bad", why it is bad)."""
        shape = self._shape_for(bucket)
        if self.mode == MEMORY:
            latents = self._memory.get(key)
            if latents is None:
                return "missing", ""
            problem = _problem(list(latents.shape), latents.is_floating_point(), shape)
            return ("bad", problem) if problem else ("ok", "")
        try:
            found = _read_entry(self.path(key), shape, whole=False)
        except _BadEntry as error:
            return "bad", str(error)
        return ("ok", "") if found is not None else ("missing", "")

    def _shape_for(self, bucket: Bucket | None) -> tuple[int | None, int, int] | None:
        return None if bucket is None else self.expected_shape(bucket)

    def fill(self, samples: Iterable[Sample], encode: Encode, *, batch_size: int = 4,
             flip_aug_keys: bool, latent_channels: int | None = None,
             cancelled: Callable[[], bool] | None = None,
             progress: Callable[[int, int], None] | None = None) -> int:
        """Encode every missing or unusable (sample, flipped) entry; return how many were encoded.

        Mirrored entries are made for samples with flip_aug when ``flip_aug_keys`` is set.
        ``encode`` maps pixels [B, 3, H, W] in [-1, 1] to latents [B, C, H/8, W/8] (the VAE's
        encode and scaling, under no_grad); samples of one bucket are batched together.
        ``latent_channels`` is C when the caller knows it (the VAE's config does), so that
        entries with another count are encoded again even when nothing else is.
        ``bad_entries`` is then the number of entries that were there but unusable.
        """
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if latent_channels is not None:
            self.latent_channels = latent_channels
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
        bad: list[str] = []
        for sample in samples:
            if sample.options.random_crop:
                raise ValueError(f"{sample.record.display_path}: random crop cannot be used with a "
                                 "latent cache (the cache holds one fixed crop per image)")
            for flipped in (False, True) if flip_aug_keys and sample.options.flip_aug else (False,):
                key = self.key(sample, flipped)
                if key in seen:
                    continue
                seen.add(key)
                state, why = self._state(key, sample.assignment.bucket)
                if state != "ok":
                    missing.append((key, sample, flipped))
                if state == "bad":
                    bad.append(f"{sample.record.display_path}{' (mirrored)' if flipped else ''}: {why}")
        self.bad_entries = len(bad)
        if bad:
            log.warning("%d latent cache entr%s could not be used and will be encoded again, e.g. %s",
                        len(bad), "y" if len(bad) == 1 else "ies", bad[0])
        return missing

    def _encode_batch(self, batch: list[tuple[str, Sample, bool]], encode: Encode) -> None:
        pixels = torch.stack([load_pixels(sample, None, flipped) for _, sample, flipped in batch])
        latents = encode(pixels)
        bucket = batch[0][1].assignment.bucket
        if isinstance(latents, torch.Tensor) and latents.dim() == 4 and self.latent_channels is None:
            self.latent_channels = int(latents.shape[1])
        channels, height, width = self.expected_shape(bucket)
        expected = (len(batch), channels, height, width)
        if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != expected:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"encode returned {shape} for {len(batch)} images of bucket "
                             f"{bucket[0]}x{bucket[1]}, not {expected}")
        for index, (key, _, _) in enumerate(batch):
            # A copy of its own per entry: a view would keep the whole batch alive, and
            # safetensors needs contiguous CPU tensors. The dtype stays as encode made it.
            self.put(key, latents[index].detach().to("cpu", copy=True).contiguous())


def _problem(shape: list[int], is_float: bool, expected: tuple[int | None, int, int] | None) -> str:
    """Why latents of ``shape`` cannot be used, or "" when they can."""
    if not is_float:
        return "not floating-point values"
    if len(shape) != 3:
        return f"shape {tuple(shape)} is not (channels, height, width)"
    if expected is None:
        return ""
    channels, height, width = expected
    if shape[1:] != [height, width] or (channels is not None and shape[0] != channels):
        wanted = f"({'C' if channels is None else channels}, {height}, {width})"
        return f"shape {tuple(shape)}, not {wanted}"
    return ""


def _read_entry(path: Path, expected: tuple[int | None, int, int] | None, *, whole: bool
                ) -> bytes | None:
    """An entry's bytes (only its header unless ``whole``), None when there is no file,
    or :class:`_BadEntry` when the file cannot be trusted. Never opens anything but a
    regular file, and never reads more than the expected latents can take."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise _BadEntry(f"cannot read it ({error.strerror or error})") from None
    if not stat.S_ISREG(info.st_mode):
        raise _BadEntry("not a regular file")
    if info.st_size > _largest_entry(expected):
        raise _BadEntry(f"{info.st_size} bytes, more than latents of that shape take")
    # Non-blocking and not following links, so a FIFO or link swapped in after the lstat
    # above cannot make the open wait or lead elsewhere; fstat then checks the open file.
    flags = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_BINARY", 0))
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise _BadEntry(f"cannot open it ({error.strerror or error})") from None
    with os.fdopen(fd, "rb") as handle:
        opened = os.fstat(handle.fileno())
        if not stat.S_ISREG(opened.st_mode):
            raise _BadEntry("not a regular file")
        try:
            head = handle.read(8)
            length = _header_length(head, opened.st_size)
            header = handle.read(length)
            _check_header(header, opened.st_size - 8 - length, expected)
            return head + header + (handle.read() if whole else b"")
        except OSError as error:
            raise _BadEntry(f"cannot read it ({error.strerror or error})") from None


def _largest_entry(expected: tuple[int | None, int, int] | None) -> int:
    if expected is None:
        return 8 + _MAX_HEADER + 8 * _MOST_CHANNELS * 1024 * 1024  # latents of an 8192 px image
    channels, height, width = expected
    return 8 + _MAX_HEADER + 8 * (channels or _MOST_CHANNELS) * height * width


def _header_length(head: bytes, file_size: int) -> int:
    if len(head) < 8:
        raise _BadEntry("cut short (no safetensors header)")
    length = struct.unpack("<Q", head)[0]
    if length > _MAX_HEADER or 8 + length > file_size:
        raise _BadEntry("cut short or not a safetensors file (bad header length)")
    return length


def _check_header(header: bytes, data_bytes: int, expected: tuple[int | None, int, int] | None) -> None:
    """The header lists exactly our one float tensor, of the expected shape, and the file
    holds exactly its bytes (a shorter file was cut short)."""
    try:
        entries = json.loads(header)
    except (UnicodeDecodeError, ValueError):
        raise _BadEntry("not a safetensors file (its header is not JSON)") from None
    if not isinstance(entries, dict):
        raise _BadEntry("not a safetensors file (its header is not a table)")
    names = sorted(name for name in entries if name != "__metadata__")
    if names != [_TENSOR] or not isinstance(entries[_TENSOR], dict):
        raise _BadEntry(f"holds {names}, not just '{_TENSOR}'")
    tensor = entries[_TENSOR]
    dtype, shape, offsets = tensor.get("dtype"), tensor.get("shape"), tensor.get("data_offsets")
    if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise _BadEntry("not a safetensors file (its shape is not a list of sizes)")
    problem = _problem(shape, dtype in _FLOAT_BYTES, expected)
    if problem:
        raise _BadEntry(problem if dtype in _FLOAT_BYTES else f"{problem} ({dtype})")
    size = math.prod(shape) * _FLOAT_BYTES[dtype]
    if offsets != [0, size] or data_bytes != size:
        raise _BadEntry(f"cut short or padded ({data_bytes} bytes of latents, not {size})")


def _clear_folder_at(target: Path) -> None:
    """Make room for ``target``: a rename replaces a file, a FIFO or a link, but not a folder.
    An empty folder is removed; one with contents is left for the person to look at."""
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        return
    try:
        os.rmdir(target)
    except OSError as error:
        raise OSError(errno.EISDIR, "a folder stands where a latent cache file belongs and it is not "
                      f"empty ({error.strerror}); remove it, or clear the latent cache", str(target)) from None


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
