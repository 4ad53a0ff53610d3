"""Commands to a running engine. The engine polls between steps and inside long phases;
any thread (the GUI, a signal handler) may call the request methods."""

from __future__ import annotations

import threading


class Cancelled(Exception):
    """Raised inside a long phase when cancel (or stop before training began) is requested."""


class Control:
    def __init__(self) -> None:
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._save = threading.Event()
        self._sample = threading.Event()

    # --- requests (any thread)
    def request_stop(self) -> None:
        """Finish the current step, save the LoRA, end the run."""
        self._stop.set()
        self._running.set()

    def request_cancel(self) -> None:
        """End the run as soon as possible without saving."""
        self._cancel.set()
        self._running.set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def request_save(self) -> None:
        self._save.set()

    def request_sample(self) -> None:
        self._sample.set()

    # --- polling (the engine)
    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def should_end(self) -> bool:
        return self._stop.is_set() or self._cancel.is_set()

    def wait_while_paused(self, timeout: float | None = None) -> bool:
        """Block while paused; True when running again (or asked to end)."""
        return self._running.wait(timeout)

    def take_save_request(self) -> bool:
        if self._save.is_set():
            self._save.clear()
            return True
        return False

    def take_sample_request(self) -> bool:
        if self._sample.is_set():
            self._sample.clear()
            return True
        return False

    def raise_if_cancelled(self) -> None:
        """For phases before training (loading, caching): there is nothing to save yet,
        so stop and cancel both end the run there."""
        if self.should_end():
            raise Cancelled("cancelled")
