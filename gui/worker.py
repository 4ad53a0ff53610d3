"""The training worker: runs one ``Trainer`` at a time in a QThread and turns each engine
event into one Qt signal. It never touches a widget; the GUI commands it through the
thread-safe ``Control``.

Each run gets a fresh QThread, Control and Trainer. The worker moves into the run's thread
for the run and back home afterwards, so between runs no thread is alive that a closing
window would have to tear down.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QEvent, QObject, QThread, Signal, Slot

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
    finished = Signal(object)  # the run's Finished or Failed, after its thread has ended
    _run_done = Signal(object)  # internal: worker thread -> home thread

    def __init__(self, parent: QObject | None = None) -> None:
        # No Qt parent on purpose when moved: an object with a parent cannot change thread.
        super().__init__(parent)
        self._home = self.thread()
        self._thread: QThread | None = None
        self._control = None
        self._job: tuple | None = None
        self._run_done.connect(self._on_self_run_done)

    # ---------------------------------------------------------------- GUI thread
    def start(self, config: object, description: str = "", base_dir: Path | None = None,
              resume_from: Path | None = None) -> None:
        if self._thread is not None:
            raise RuntimeError("a training run is already in progress")
        if self.parent() is not None:
            raise RuntimeError("TrainingWorker must have no Qt parent to move into its thread")
        from core.training.control import Control  # plain Python, no torch

        self._control = Control()
        self._job = (config, description, base_dir, resume_from)
        thread = QThread()
        thread.setObjectName("lorakiln-training")
        self._thread = thread
        self.moveToThread(thread)
        thread.started.connect(self._on_thread_started)
        thread.start()

    def is_running(self) -> bool:
        return self._thread is not None

    def wait(self, timeout_ms: int) -> bool:
        """Block until the run's thread has ended; then deliver its queued signals at once,
        so ``finished`` has been emitted when this returns True."""
        thread = self._thread
        if thread is None:
            return True
        if not thread.wait(max(0, int(timeout_ms))):
            return False
        QCoreApplication.sendPostedEvents(None, QEvent.Type.MetaCall)
        return True

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
    def _on_self_run_done(self, result: object) -> None:
        # Back home (GUI thread): the run's thread is returning; wait so it is gone before
        # anyone may start the next run from a ``finished`` handler.
        if self._thread is not None:
            self._thread.wait()
            self._thread.deleteLater()
        self._thread = None
        self._control = None
        self.finished.emit(result)

    # ---------------------------------------------------------------- worker thread
    @Slot()
    def _on_thread_started(self) -> None:
        thread = self._thread
        config, description, base_dir, resume_from = self._job
        self._job = None
        try:
            result = self._run(config, description, base_dir, resume_from)
        finally:
            # Only the object's own thread may push it elsewhere, so go home from here.
            self.moveToThread(self._home)
            thread.quit()
        self._run_done.emit(result)

    def _run(self, config: object, description: str, base_dir: Path | None, resume_from: Path | None) -> object:
        try:
            # Imported here, not at module level: torch and diffusers take seconds to load
            # and the window must appear before they do.
            from core.training.engine import Trainer

            trainer = Trainer(config, _SignalSink(self), self._control, description=description,
                              resume_from=resume_from, base_dir=base_dir)
            return trainer.run()
        except BaseException as error:  # noqa: BLE001 - every failure must reach the person
            return _failed_outside_engine(error)


def _failed_outside_engine(error: BaseException) -> object:
    """The engine reports its own failures; this covers what happens before it exists
    (a broken install that cannot import torch, say)."""
    import traceback

    from core.training.events import Failed

    log.exception("training could not start")
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return Failed("error", f"Training could not start: {error}",
                  ("check that the installation is complete (python3 dev.py setup)",), trace, None, None)
