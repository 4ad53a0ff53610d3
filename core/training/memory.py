"""Peak memory of one run, per phase (loading, caching, training, sampling, saving).

``torch.cuda.max_memory_allocated`` is a high-water mark of the whole process: left alone,
the second run of a queue or a sweep reports the first run's peak. ``PhasePeaks`` resets it
when a run starts and at every change of phase, and keeps the largest value each phase
reached (a phase entered again, such as training after each sample, keeps its maximum).

What is measured, by device:

- CUDA: the caching allocator's figures. *allocated* is the memory held by tensors;
  *reserved* is what the allocator holds from the driver (allocated plus its cache), the
  better guide to what must fit on the card. Neither counts the CUDA context (some hundred
  MB per process), nor memory of other processes.
- CPU: the process's resident memory (RSS) — the whole process, the GUI included. On Linux
  the kernel's high-water mark (VmHWM) is reset at each phase (``/proc/self/clear_refs``),
  so a phase's peak is exact. Elsewhere, or where that file cannot be written, the peak is
  the largest RSS sampled at phase changes and at each reported step: a short spike
  between two samples is missed. ``method`` says which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

MB = 1024 * 1024
CUDA_METHOD = "cuda allocator"
RSS_HWM_METHOD = "rss high-water mark"
RSS_SAMPLED_METHOD = "rss sampled"
# A pause keeps the memory of the phase it interrupts: it is no phase of its own.
_NOT_A_PHASE = frozenset({"paused"})


class MemorySource(Protocol):
    kind: str  # "cuda" or "rss", as StepMetrics.memory_kind
    method: str

    def reset(self) -> None:
        """Start a new peak from what is in use now."""

    def now(self) -> tuple[float, float]:
        """(in use, reserved) in MB now; on a CPU both are the RSS."""

    def peak(self) -> tuple[float, float]:
        """(in use, reserved) peaks in MB since the last reset."""


class CudaSource:
    kind, method = "cuda", CUDA_METHOD

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def now(self) -> tuple[float, float]:
        return torch.cuda.memory_allocated(self.device) / MB, torch.cuda.memory_reserved(self.device) / MB

    def peak(self) -> tuple[float, float]:
        return torch.cuda.max_memory_allocated(self.device) / MB, torch.cuda.max_memory_reserved(self.device) / MB


class RssSource:
    kind = "rss"

    def __init__(self, proc: Path = Path("/proc/self")) -> None:
        import psutil

        self._process = psutil.Process()
        self._proc = proc
        self._sampled = 0.0
        self._exact = True  # until the kernel's high-water mark proves unusable
        self.method = RSS_HWM_METHOD

    def _rss(self) -> float:
        return self._process.memory_info().rss / MB

    def _high_water_mb(self) -> float | None:
        try:
            for line in (self._proc / "status").read_text(encoding="ascii", errors="replace").splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
        except (OSError, ValueError, IndexError):
            pass
        return None

    def _fall_back(self) -> None:
        self._exact, self.method = False, RSS_SAMPLED_METHOD

    def reset(self) -> None:
        if self._exact:
            try:
                # "5" resets only the peak-RSS mark (Linux 4.0+); it changes nothing else.
                (self._proc / "clear_refs").write_text("5", encoding="ascii")
            except OSError:
                self._fall_back()
        self._sampled = self._rss()

    def now(self) -> tuple[float, float]:
        rss = self._rss()
        self._sampled = max(self._sampled, rss)
        return rss, rss

    def peak(self) -> tuple[float, float]:
        rss = self.now()[0]
        if self._exact:
            mark = self._high_water_mb()
            if mark is not None:
                return max(mark, rss), max(mark, rss)
            self._fall_back()
        return self._sampled, self._sampled


def source_for(device: torch.device) -> MemorySource:
    return CudaSource(device) if device.type == "cuda" else RssSource()


def _peak_keys(kind: str) -> tuple[str, str | None]:
    return ("allocated_mb", "reserved_mb") if kind == "cuda" else ("rss_mb", None)


def _finite_mb(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if number == number and 0 <= number < float("inf") else None


class PhasePeaks:
    """The peaks of one run. Create it when the run starts (that resets the device's peak),
    call ``enter(phase)`` at each change of phase; ``figures`` for a step, ``by_phase`` and
    ``overall`` for the summary.

    By phase, in MB: ``{"training": {"allocated_mb": ..., "reserved_mb": ...}}`` on CUDA,
    ``{"training": {"rss_mb": ...}}`` on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.source = source_for(device)
        self.kind = self.source.kind
        self.phase: str | None = None
        self._peaks: dict[str, tuple[float, float]] = {}
        self._floor = 0.0  # the overall peak of earlier sessions of a resumed run without phases
        self.source.reset()

    @property
    def method(self) -> str:
        return self.source.method

    def enter(self, phase: str) -> None:
        if phase in _NOT_A_PHASE or phase == self.phase:
            return
        self._close()
        self.source.reset()
        self.phase = phase

    def _close(self) -> None:
        if self.phase is not None:
            self._peaks[self.phase] = self._phase_peak(self.phase)

    def _phase_peak(self, phase: str) -> tuple[float, float]:
        earlier = self._peaks.get(phase, (0.0, 0.0))
        if phase != self.phase:
            return earlier
        now = self.source.peak()
        return max(earlier[0], now[0]), max(earlier[1], now[1])

    def figures(self) -> dict[str, float | str]:
        """What a step reports: memory in use and reserved now, the peaks of the current
        phase (the training phase, at a step) and the run's peak so far."""
        in_use, reserved = self.source.now()
        phase_peak, phase_reserved = self._phase_peak(self.phase) if self.phase else (in_use, reserved)
        overall, _ = self.overall()
        return {"allocated": in_use, "reserved": reserved, "peak": phase_peak, "peak_reserved": phase_reserved,
                "run_peak": max(overall, phase_peak), "kind": self.kind}

    def by_phase(self) -> dict[str, dict[str, float]]:
        used, reserved = _peak_keys(self.kind)
        phases = dict.fromkeys([*self._peaks, *([self.phase] if self.phase else [])])
        out = {}
        for phase in phases:
            peak, peak_reserved = self._phase_peak(phase)
            out[phase] = {used: peak, **({reserved: peak_reserved} if reserved else {})}
        return out

    def overall(self) -> tuple[float, float | None]:
        """(peak in use, peak reserved) over every phase; reserved is None on a CPU."""
        peaks = [self._phase_peak(phase) for phase in {*self._peaks, *([self.phase] if self.phase else [])}]
        used = max([self._floor, *(p[0] for p in peaks)])
        if self.kind != "cuda":
            return used, None
        return used, max([0.0, *(p[1] for p in peaks)])

    def take_earlier(self, by_phase: Any, kind: Any, overall_mb: Any) -> None:
        """The peaks saved by earlier sessions of a resumed run, so the run keeps them. Values
        of another kind of memory (a run resumed on another device) or of the wrong type
        (a damaged state) are left out."""
        if kind is not None and kind != self.kind:
            return
        floor = _finite_mb(overall_mb)
        if floor is not None:
            self._floor = max(self._floor, floor)
        if not isinstance(by_phase, dict):
            return
        used_key, reserved_key = _peak_keys(self.kind)
        for phase, values in by_phase.items():
            if not isinstance(phase, str) or not isinstance(values, dict):
                continue
            used = _finite_mb(values.get(used_key))
            if used is None:
                continue
            reserved = _finite_mb(values.get(reserved_key)) if reserved_key else used
            before = self._peaks.get(phase, (0.0, 0.0))
            self._peaks[phase] = (max(before[0], used), max(before[1], reserved or 0.0))
