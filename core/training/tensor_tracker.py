"""Counting the bytes of live device tensor storages while code runs, as CUDA's caching allocator
would count them (torch.cuda.memory_allocated), without a GPU: the VRAM forecast runs the
training step on the meta device under :class:`StorageTracker`.

Every storage an operation creates is added when it first appears, rounded up to the
allocator's 512-byte block, and subtracted when it is freed (a weakref on the storage: a
storage object stays the same Python object while it lives, so its weakref fires exactly when
the last tensor viewing it goes). Views and in-place results share a storage and add nothing.
Tensors that exist before tracking starts (weights, the batch) are ``adopt``-ed with a
category. Each event has a sequence number, so what was live at the peak is read off the
records afterwards; a storage can be given its category after it was made (a gradient is only
known as one when the optimizer steps), and still counts under it at the peak.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# The CUDA caching allocator hands out blocks in multiples of 512 bytes.
BLOCK = 512
OTHER = "activations"


def allocated_bytes(nbytes: int) -> int:
    return -(-nbytes // BLOCK) * BLOCK


@dataclass
class _Record:
    nbytes: int
    born: int
    died: int | None
    category: str


class StorageTracker(TorchDispatchMode):
    """Live storage bytes under the mode, their peak, and the bytes by category at the peak.
    New storages count as ``default`` (activations) until ``label``-ed."""

    def __init__(self, default: str = OTHER) -> None:
        super().__init__()
        self.default = default
        self.current = 0
        self.peak = 0
        self._peak_seq = 0
        self._seq = 0
        self._records: list[_Record] = []
        self._live: dict[int, tuple[_Record, weakref.ref]] = {}

    # ------------------------------------------------------------------ counting
    def _add(self, storage: torch.UntypedStorage, category: str) -> _Record:
        key = id(storage)
        known = self._live.get(key)
        if known is not None:
            return known[0]
        self._seq += 1
        record = _Record(allocated_bytes(storage.nbytes()), self._seq, None, category)
        self._records.append(record)

        def freed(_: weakref.ref, key: int = key, record: _Record = record) -> None:
            if record.died is None:  # else released already
                self._end(key, record)

        self._live[key] = (record, weakref.ref(storage, freed))
        self.current += record.nbytes
        if self.current > self.peak:
            self.peak, self._peak_seq = self.current, self._seq
        return record

    def _end(self, key: int, record: _Record) -> None:
        self._seq += 1
        record.died = self._seq
        self.current -= record.nbytes
        if self._live.get(key, (None,))[0] is record:
            del self._live[key]

    def release(self, tensors: Iterable[torch.Tensor]) -> None:
        """Stop counting tensors that leave the GPU (a module offloaded to the CPU)."""
        for tensor in tensors:
            known = self._live.get(id(tensor.untyped_storage()))
            if known is not None:
                self._end(id(tensor.untyped_storage()), known[0])

    def adopt(self, tensors: Iterable[torch.Tensor], category: str) -> None:
        """Count tensors made before tracking (or outside it) under ``category``."""
        for tensor in tensors:
            if tensor.device.type != "cpu":  # host tensors (AdamW's step counts) use no VRAM
                self._add(tensor.untyped_storage(), category).category = category

    def label(self, tensors: Iterable[torch.Tensor], category: str) -> None:
        """Give tracked tensors their category (one made under the mode keeps its birth)."""
        self.adopt(tensors, category)

    def reset_peak(self) -> None:
        """Start a new phase: the peak from here on (what is live now stays counted)."""
        self.peak, self._peak_seq = self.current, self._seq

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's signature
        out = func(*args, **(kwargs or {}))
        for value in tree_leaves(out):
            # Host tensors (noise drawn on the CPU, token ids, AdamW's step counts) use no VRAM.
            if isinstance(value, torch.Tensor) and value.device.type != "cpu":
                self._add(value.untyped_storage(), self.default)
        return out

    # ------------------------------------------------------------------ reading
    def at_peak(self) -> dict[str, int]:
        """Bytes live at the peak, by category."""
        sizes: dict[str, int] = {}
        seq = self._peak_seq
        for record in self._records:
            if record.born <= seq and (record.died is None or record.died > seq):
                sizes[record.category] = sizes.get(record.category, 0) + record.nbytes
        return sizes

    def live(self) -> dict[str, int]:
        """Bytes live now, by category."""
        sizes: dict[str, int] = {}
        for record, _ in self._live.values():
            sizes[record.category] = sizes.get(record.category, 0) + record.nbytes
        return sizes
