"""Running the training queue: the one set of rules the desktop app and ``lorakiln queue run``
both follow. Take the next pending item for this process, check its configuration before
anything trains (an item that no longer loads or no longer validates is marked failed with the
field messages, and the queue goes on), record where its run folder is as soon as there is one,
record how it ended, and go on — except after a run the person stopped or cancelled, or when
they asked the queue to end after the current run.

``QueueRunner`` holds those rules and no loop, so each front end drives it its own way: the
CLI in a plain loop (``run_queue``), the app one step per Qt event, its runs in the training
worker's thread, the GUI thread never waiting for one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from core.config.presets import PresetError
from core.config.schema import TrainConfig
from core.studies.run_queue import PENDING, RUNNING, QueueError, QueueItem, RunQueue, how_to_continue
from core.system.words import count
from core.training.control import Control
from core.training.events import Event, Failed, Finished, MultiSink, RunStarted, Sink
from core.training.validation import errors, validate

log = logging.getLogger("lorakiln.queue")

# A run that ended for one of these reasons was ended by the person: the queue ends with it.
ENDS_THE_QUEUE = ("stopped", "cancelled")


@dataclass(frozen=True)
class QueuedRun:
    """An item this process has claimed, with its configuration checked and ready to train."""

    item: QueueItem
    config: TrainConfig


@dataclass(frozen=True)
class Outcome:
    """How one item of this pass ended, as recorded in the queue."""

    item_id: str
    label: str
    status: str
    message: str
    run_dir: str | None
    sweep_id: str | None


def _no_report(line: str) -> None:
    pass


class QueueRunner:
    """One pass over the queue, one item at a time. Call ``next_run`` for the next item to
    train (None once the pass has ended: ``ended_because`` says why), train its config, then
    call ``run_ended`` with the engine's result (or ``run_raised`` / ``run_interrupted`` /
    ``run_not_started``), and ``next_run`` again. ``report`` receives one line for each thing
    the person should read: an item that cannot start, a run that failed, why the pass ended.
    """

    def __init__(self, queue: RunQueue, report: Callable[[str], None] = _no_report) -> None:
        self.queue = queue
        self.outcomes: list[Outcome] = []  # the items this pass ended, in order
        self.ended_because: str | None = None  # set when the pass has ended
        self._report = report
        self._current: QueueItem | None = None
        self._finish_after_current = False

    @property
    def active(self) -> bool:
        return self.ended_because is None

    @property
    def current(self) -> QueueItem | None:
        """The item training now (claimed and handed out by ``next_run``, not yet ended)."""
        return self._current

    def finish_after_current(self) -> None:
        """End the pass once the current run has ended (the rest stays pending)."""
        self._finish_after_current = True

    def next_run(self) -> QueuedRun | None:
        """Claim the next pending item whose configuration is fit to train; items that are not
        are marked failed with what is wrong, and the next one is tried. None when the pass
        ends. Raises QueueError (or OSError) when the queue cannot be taken before anything ran
        (another process runs it, the file is locked or cannot be written): nothing ran, so the
        caller says why; later, the same ends the pass quietly, with a report."""
        if self._current is not None:
            raise RuntimeError("the current queued run has not been recorded as ended yet")
        while self.active:
            if self._finish_after_current:
                self._end("as asked, after that run")
                break
            try:  # marked running for this process in one locked step: no other runner takes it too
                item = self.queue.claim_next()
            except (QueueError, OSError) as err:
                self._end("the next item could not be taken")
                if not self.outcomes:
                    raise
                self._report(f"cannot take the next item from {self.queue.path}: {err}")
                break
            if item is None:
                self._end("every item has run")
                break
            config, problem = self._checked_config(item)
            if config is not None:
                self._current = item
                return QueuedRun(item, config)
            self._report(f"“{item.label}” cannot start: {problem}")
            self._record(item, "failed", None, problem)
        return None

    def _checked_config(self, item: QueueItem) -> tuple[TrainConfig | None, str]:
        try:
            config = self.queue.config_of(item)
        except PresetError as err:
            return None, str(err).replace("\n", " ")
        found = errors(validate(config))
        if found:
            return None, "; ".join(str(problem) for problem in found)
        return config, ""

    def run_started(self, run_dir: str) -> None:
        """The engine made the run folder: recorded at once, so an item whose process dies
        mid-run still points at the folder to resume."""
        if self._current is not None and run_dir:
            self._mark(self._current.id, RUNNING, run_dir)

    def run_ended(self, result: Finished | Failed | None) -> Outcome:
        """Record the engine's result for the current item (None: a run that reported none, as
        the other processes of a multi-GPU launch do); stopped or cancelled ends the pass."""
        item = self._take_current()
        if isinstance(result, Finished):
            outcome = self._record(item, result.reason, result.run_dir or None,
                                   f"{result.steps} steps in {result.wall_seconds:.0f} s")
            if result.reason in ENDS_THE_QUEUE:
                self._end(f"the run was {result.reason}")
            return outcome
        summary = result.summary if isinstance(result, Failed) else "the run reported no result"
        self._report(f"“{item.label}” failed: {summary}; going on with the next item")
        return self._record(item, "failed", result.run_dir if isinstance(result, Failed) else None, summary)

    def run_raised(self, error: Exception) -> Outcome:
        """The trainer raised instead of reporting (the engine reports its own failures; this is
        a last guard): the item failed, the queue goes on."""
        item = self._take_current()
        message = f"{type(error).__name__}: {error}"
        self._report(f"“{item.label}” failed: {message}; going on with the next item")
        return self._record(item, "failed", None, message)

    def run_interrupted(self) -> None:
        """Ctrl+C or an exit in the middle of a run: the item can be resumed, not failed."""
        item = self._take_current()
        try:
            run_dir = self.queue.get(item.id).run_dir
        except QueueError:
            run_dir = item.run_dir
        self._record(item, "interrupted", None, f"interrupted while training; {how_to_continue(run_dir)}")
        self._end("interrupted")

    def run_not_started(self) -> None:
        """The front end could not start the run: the item waits again and the pass ends."""
        item = self._take_current()
        self._mark(item.id, PENDING)
        self._end("the run could not start")

    def _take_current(self) -> QueueItem:
        item, self._current = self._current, None
        if item is None:
            raise RuntimeError("no queued run is training")
        return item

    def _record(self, item: QueueItem, status: str, run_dir: str | None, message: str) -> Outcome:
        self._mark(item.id, status, run_dir, message)
        try:
            item = self.queue.get(item.id)
        except QueueError:  # removed from the file by another process meanwhile
            pass
        outcome = Outcome(item.id, item.label, status, message, run_dir or item.run_dir, item.sweep_id)
        self.outcomes.append(outcome)
        return outcome

    def _mark(self, item_id: str, status: str, run_dir: str | None = None, message: str = "") -> None:
        # The run and its folder are safe whatever happens here; only the queue's note of it is lost.
        try:
            self.queue.mark(item_id, status, run_dir, message)
        except (QueueError, OSError) as err:
            self._report(f"could not record in {self.queue.path} that item {item_id} is {status}: {err}")

    def _end(self, why: str) -> None:
        if self.ended_because is None:
            self.ended_because = why


# ---------------------------------------------------------------------- the plain loop (CLI)


class _RunFolderRecorder:
    """Passes the engine's RunStarted on to the runner, which records the run folder at once."""

    def __init__(self, runner: QueueRunner) -> None:
        self.runner = runner

    def emit(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.runner.run_started(event.run_dir)


def _default_trainer(config: TrainConfig, sink: Sink, control: Control, description: str = "") -> Any:
    from core.training.engine import Trainer

    return Trainer(config, sink, control, description=description)


def run_queue(queue: RunQueue, sink_factory: Callable[[QueueItem], Sink],
              control_factory: Callable[[QueueItem], Control],
              stop_after_current: Callable[[], bool] = lambda: False,
              trainer_factory: Callable[..., Any] = _default_trainer,
              report: Callable[[str], None] = _no_report) -> list[QueueItem]:
    """Train the pending items in order, in this thread, by ``QueueRunner``'s rules; returns
    the items this call ended, as they are recorded now.

    Raises QueueError when another live process is running the queue before this call took
    any item. Each item gets a fresh trainer, sink and control (``*_factory(item)``), so
    nothing of one run is carried into the next; ``stop_after_current()`` is asked after each
    run. ``trainer_factory(config, sink, control, description=...)`` returns an object whose
    ``run()`` returns the engine's Finished or Failed event (tests pass a fake one).
    """
    runner = QueueRunner(queue, report)
    while (queued := runner.next_run()) is not None:
        item = queued.item
        sink = MultiSink(_RunFolderRecorder(runner), sink_factory(item))
        try:
            result = trainer_factory(queued.config, sink, control_factory(item), description=item.description).run()
        except Exception as err:  # noqa: BLE001 - the engine reports its own failures; this is a last guard
            runner.run_raised(err)
        except BaseException:  # Ctrl+C or exit in the middle of a run: resumable, not failed
            runner.run_interrupted()
            raise
        else:
            runner.run_ended(result)
        if stop_after_current():
            runner.finish_after_current()
    log.info("queue: ended (%s) after %s", runner.ended_because, count(len(runner.outcomes), "item"))
    ended = {outcome.item_id for outcome in runner.outcomes}
    return [item for item in queue.items if item.id in ended]
