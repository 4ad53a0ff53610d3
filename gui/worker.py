"""The training worker: runs one ``Trainer`` at a time in a background thread and turns
each engine event into one Qt signal. It never touches a widget; the GUI commands it
through the thread-safe ``Control``.

The worker object itself stays in the GUI thread for its whole life. The run happens in a
plain Python thread that only *emits* the worker's signals; because the receivers live in
the GUI thread, Qt queues each emission there. Nothing is ever moved between threads and
the GUI thread never blocks on the run unless asked to (``wait``), so a closing window or a
finishing run cannot deadlock the two threads against each other.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QEvent, QObject, Signal, Slot

from gui.gc_guard import gui_collector

log = logging.getLogger("lorakiln.gui")


class _SignalSink:
    """The engine's sink inside the worker thread: every event becomes one ``event`` signal,
    which Qt queues to the GUI thread."""

    def __init__(self, worker: TrainingWorker) -> None:
        self._worker = worker

    def emit(self, event: object) -> None:
        self._worker.event.emit(event)


class TrainingWorker(QObject):
    event = Signal(object)  # RunStarted, Status, PhaseProgress, StepMetrics, ... in engine order
    finished = Signal(object)  # the run's Finished or Failed, once its thread has nothing left to do
    _run_done = Signal(object)  # internal: worker thread -> GUI thread

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._thread: threading.Thread | None = None
        self._control = None
        self._run_done.connect(self._on_run_done)

    # ---------------------------------------------------------------- GUI thread
    def start(self, config: object, description: str = "", base_dir: Path | None = None,
              resume_from: Path | None = None) -> None:
        if self._thread is not None:
            raise RuntimeError("a training run is already in progress")
        from core.training.control import Control  # plain Python, no torch

        self._control = Control()
        control = self._control
        gui_collector().hold()  # no garbage collection in the training thread (see gc_guard)
        thread = threading.Thread(target=self._thread_main, name="lorakiln-training",
                                  args=(control, config, description, base_dir, resume_from), daemon=True)
        self._thread = thread
        thread.start()

    def is_running(self) -> bool:
        return self._thread is not None

    def wait(self, timeout_ms: int) -> bool:
        """Block until the run's thread has ended; then deliver its queued signals at once,
        so ``finished`` has been emitted when this returns True."""
        thread = self._thread
        if thread is None:
            return True
        deadline = time.monotonic() + max(0, int(timeout_ms)) / 1000
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            return False
        QCoreApplication.sendPostedEvents(self, QEvent.Type.MetaCall)
        return self._thread is None

    def stop(self) -> None:
        """Finish the current step, save the LoRA and end."""
        if self._control is not None:
            self._control.request_stop()

    def cancel(self) -> None:
        """End as soon as possible without saving."""
        if self._control is not None:
            self._control.request_cancel()

    def pause(self) -> None:
        if self._control is not None:
            self._control.pause()

    def resume(self) -> None:
        if self._control is not None:
            self._control.resume()

    def save_now(self) -> None:
        if self._control is not None:
            self._control.request_save()

    def sample_now(self) -> None:
        if self._control is not None:
            self._control.request_sample()

    @Slot(object)
    def _on_run_done(self, result: object) -> None:
        # GUI thread: the run's thread has emitted its last signal and is returning; it
        # touches nothing shared after that, so there is nothing to wait for.
        self._thread = None
        self._control = None
        gui_collector().release()  # collects here what the run left, then hands collection back
        _empty_cuda_cache()
        self.finished.emit(result)

    # ---------------------------------------------------------------- worker thread
    def _thread_main(self, control: object, config: object, description: str, base_dir: Path | None,
                     resume_from: Path | None) -> None:
        result = self._run(control, config, description, base_dir, resume_from)
        self._run_done.emit(result)

    def _run(self, control: object, config: object, description: str, base_dir: Path | None,
             resume_from: Path | None) -> object:
        try:
            # Imported here, not at module level: torch and diffusers take seconds to load
            # and the window must appear before they do.
            from core.training.engine import Trainer

            trainer = Trainer(config, _SignalSink(self), control, description=description,
                              resume_from=resume_from, base_dir=base_dir)
            return trainer.run()
        except BaseException as error:  # noqa: BLE001 - every failure must reach the person
            return _failed_outside_engine(error)


def _empty_cuda_cache() -> None:
    """After the GUI thread's collection has freed a finished run's tensors, give their cached
    CUDA blocks back (the engine cannot: it does not collect in the training thread here)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _failed_outside_engine(error: BaseException) -> object:
    """The engine reports its own failures; this covers what happens before it exists
    (a broken install that cannot import torch, say)."""
    import traceback

    from core.training.events import Failed

    log.exception("training could not start")
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return Failed("error", f"Training could not start: {error}",
                  ("check that the installation is complete (python3 dev.py setup)",), trace, None, None)
