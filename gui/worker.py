"""The training worker: runs one ``Trainer`` at a time in a ``QThread`` and turns each engine
event into one Qt signal. It never touches a widget; the GUI commands it through the
thread-safe ``Control``.

``TrainingWorker`` stays in the GUI thread for its whole life. Each run gets a fresh QThread
and a ``_RunJob`` moved to it; the thread's ``started`` signal calls the job there. The job
only *emits*: every receiver lives in the GUI thread, so Qt queues each emission there and
the GUI thread never blocks on the run unless asked to (``wait``). The job's last act is to
move itself back to the GUI thread and end its thread's event loop, so nothing Qt-owned is
destroyed in the training thread (see gui.gc_guard for the garbage collector's side of that).
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QEvent, QObject, QThread, Signal, Slot

from gui.gc_guard import gui_collector

log = logging.getLogger("lorakiln.gui")
# How long the GUI thread waits for a thread whose run has returned to leave its event loop:
# it has nothing left to do but return, so this is a bound, never a wait for training.
THREAD_END_WAIT_MS = 5000


class _SignalSink:
    """The engine's sink inside the training thread: every event becomes one ``event`` signal
    of the worker, which Qt queues to the GUI thread."""

    def __init__(self, worker: TrainingWorker) -> None:
        self._worker = worker

    def emit(self, event: object) -> None:
        self._worker.event.emit(event)


class _RunJob(QObject):
    """One run, executed in the thread it is moved to."""

    done = Signal(object)  # the run's Finished or Failed: training thread -> GUI thread

    def __init__(self, worker: TrainingWorker, control: object, config: object, description: str,
                 base_dir: Path | None, resume_from: Path | None) -> None:
        super().__init__()
        self._args: tuple | None = (worker, control, config, description, base_dir, resume_from)

    @Slot()
    def run(self) -> None:
        args, self._args = self._args, None  # the job keeps nothing of the run once it returns
        result = _run(*args) if args is not None else None
        del args
        home = QCoreApplication.instance()
        if home is not None:
            self.moveToThread(home.thread())  # allowed: we are in the job's thread ("push")
        self.done.emit(result)
        QThread.currentThread().quit()  # exec() returns at once, even when it has not begun


class TrainingWorker(QObject):
    event = Signal(object)  # RunStarted, Status, PhaseProgress, StepMetrics, ... in engine order
    finished = Signal(object)  # the run's Finished or Failed, once its thread has nothing left to do

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._thread: QThread | None = None
        self._job: _RunJob | None = None
        self._control = None

    # ---------------------------------------------------------------- GUI thread
    def start(self, config: object, description: str = "", base_dir: Path | None = None,
              resume_from: Path | None = None) -> None:
        if self._thread is not None:
            raise RuntimeError("a training run is already in progress")
        from core.training.control import Control  # plain Python, no torch

        self._control = Control()
        gui_collector().hold()  # no garbage collection in the training thread (see gc_guard)
        thread = QThread()
        thread.setObjectName("lorakiln-training")
        job = _RunJob(self, self._control, config, description, base_dir, resume_from)
        job.moveToThread(thread)
        thread.started.connect(job.run)
        job.done.connect(self._on_run_done)  # queued: the job emits from the training thread
        self._thread, self._job = thread, job
        thread.start()

    def is_running(self) -> bool:
        return self._thread is not None

    def thread_of_run(self) -> QThread | None:
        """The QThread the current run executes in (None between runs)."""
        return self._thread

    def wait(self, timeout_ms: int) -> bool:
        """Block until the run's thread has ended; then deliver its queued signals at once,
        so ``finished`` has been emitted when this returns True."""
        thread = self._thread
        if thread is None:
            return True
        if not thread.wait(max(0, int(timeout_ms))):
            return False
        QCoreApplication.sendPostedEvents(self, QEvent.Type.MetaCall)
        if self._job is not None:
            QCoreApplication.sendPostedEvents(self._job, QEvent.Type.MetaCall)
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
        # GUI thread: the job has emitted its last signal and ended its thread's loop; the
        # thread only has to return, so this wait is short and bounded.
        thread, self._thread, self._job, self._control = self._thread, None, None, None
        if thread is not None and not thread.wait(THREAD_END_WAIT_MS):
            log.warning("the training thread did not end within %d ms of its run", THREAD_END_WAIT_MS)
        release_run_memory()
        self.finished.emit(result)


def _run(worker: TrainingWorker, control: object, config: object, description: str, base_dir: Path | None,
         resume_from: Path | None) -> object:
    try:
        # Imported here, not at module level: torch and diffusers take seconds to load
        # and the window must appear before they do.
        from core.training.engine import Trainer

        trainer = Trainer(config, _SignalSink(worker), control, description=description,
                          resume_from=resume_from, base_dir=base_dir)
        return trainer.run()
    except BaseException as error:  # noqa: BLE001 - every failure must reach the person
        return _failed_outside_engine(error)


def release_run_memory() -> None:
    """After a run: free what it left in reference cycles (here, in the GUI thread), give
    CUDA's cached blocks back to the driver and glibc's free heap back to the system, so an
    idle app holds about what a fresh one does and the next run's peak RAM is its own."""
    gui_collector().release()  # collects here, then hands collection back (ends the run's hold)
    _empty_cuda_cache()
    _trim_heap()


def _empty_cuda_cache() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _trim_heap() -> None:
    """glibc keeps freed memory in its arenas; malloc_trim hands it back. Elsewhere (macOS,
    Windows, musl) there is no such call and nothing to do."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _failed_outside_engine(error: BaseException) -> object:
    """The engine reports its own failures; this covers what happens before it exists
    (a broken install that cannot import torch, say)."""
    import traceback

    from core.training.events import Failed

    log.exception("training could not start")
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return Failed("error", f"Training could not start: {error}",
                  ("check that the installation is complete (python3 dev.py setup)",), trace, None, None)
