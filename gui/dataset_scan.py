"""Scanning the dataset off the GUI thread, one scan at a time, cancellable.

A scan reads every image's header and caption, which for thousands of files on a slow
disk takes seconds; the window must stay responsive and a newer scan (the person is
still editing the folders) must replace an older one without waiting for its result.
"""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from core.data.caption_tokens import count_ahead
from core.config.schema import DatasetParams
from core.data.scan import DatasetError, ScanCancelled, scan_dataset

DONE, FAILED, CANCELLED = "done", "failed", "cancelled"


class _Relay(QObject):
    progress = Signal(int, int, int)  # generation, done, total
    finished = Signal(int, str, object, float)  # generation, outcome, ScanResult or message, seconds


def _count_tokens_ahead(scan, cancelled) -> None:  # noqa: ANN001 - ScanResult, a callable
    # Planning warns about captions past the token limit and runs on the GUI thread: count
    # the captions here, off it, so that the first plan of a large dataset does not stall.
    try:
        count_ahead((image.caption for image in scan.images), cancelled)
    except Exception:  # noqa: BLE001 - only a speed-up: the plan counts what is left itself
        pass


class _ScanJob(QRunnable):
    def __init__(self, params: DatasetParams, base_dir: Path | None, generation: int,
                 relay: _Relay, cancel: threading.Event, stop: threading.Event) -> None:
        super().__init__()
        self._params, self._base_dir, self._generation = params, base_dir, generation
        self._relay, self._cancel, self._stop = relay, cancel, stop

    def _cancelled(self) -> bool:
        return self._cancel.is_set() or self._stop.is_set()

    def _progress(self, done: int, total: int) -> None:
        if not self._stop.is_set():
            self._relay.progress.emit(self._generation, done, total)

    def run(self) -> None:
        start = time.perf_counter()
        try:
            result: object = scan_dataset(self._params, self._base_dir, self._cancelled, self._progress)
            _count_tokens_ahead(result, self._cancelled)
            outcome = DONE
        except ScanCancelled:
            result, outcome = None, CANCELLED
        except DatasetError as error:
            result, outcome = str(error), FAILED
        except Exception as error:  # noqa: BLE001 - a bug must not leave the tab waiting forever
            result, outcome = f"scanning failed unexpectedly: {error!r}", FAILED
        if not self._stop.is_set():
            self._relay.finished.emit(self._generation, outcome, result, time.perf_counter() - start)


class DatasetScanner(QObject):
    """Runs :func:`core.data.scan.scan_dataset` in a worker thread; only the newest scan reports."""

    started = Signal()
    progress = Signal(int, int)  # files done, files in all
    finished = Signal(object, float)  # ScanResult, seconds
    failed = Signal(str)  # DatasetError's message: names the setting to change
    cancelled = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        stop = self._stop = threading.Event()
        # One thread: a replaced scan is cancelled and stops within CHECK_EVERY files, so the
        # next one starts right after it instead of competing for the disk. The pool is made
        # before the relay so, as children, the pool (which waits for its job) goes first.
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._relay = _Relay(self)
        self._relay.progress.connect(self._on_relay_progress)
        self._relay.finished.connect(self._on_relay_finished)
        self.destroyed.connect(stop.set)
        self._generation = 0
        self._cancel: threading.Event | None = None
        self._running = False
        self.count = 0  # scans started, for tests and the status line

    @property
    def running(self) -> bool:
        return self._running

    def start(self, params: DatasetParams, base_dir: Path | None) -> None:
        """Scan a copy of ``params`` (the GUI may edit the original meanwhile)."""
        if self._cancel is not None:
            self._cancel.set()
        self._generation += 1
        self._cancel = threading.Event()
        self._running = True
        self.count += 1
        self._pool.start(_ScanJob(copy.deepcopy(params), base_dir, self._generation, self._relay,
                                  self._cancel, self._stop))
        self.started.emit()

    def cancel(self) -> None:
        if self._cancel is not None and self._running:
            self._cancel.set()

    def shutdown(self) -> None:
        """Stop any scan and wait for its thread (before the window goes away)."""
        self._stop.set()
        self._pool.clear()
        self._pool.waitForDone()
        self._running = False

    def _on_relay_progress(self, generation: int, done: int, total: int) -> None:
        if generation == self._generation:
            self.progress.emit(done, total)

    def _on_relay_finished(self, generation: int, outcome: str, result: object, seconds: float) -> None:
        if generation != self._generation:
            return  # a replaced scan: its result describes folders no longer listed
        self._running = False
        self._cancel = None
        if outcome == DONE:
            self.finished.emit(result, seconds)
        elif outcome == FAILED:
            self.failed.emit(str(result))
        else:
            self.cancelled.emit()
