"""The open project's VRAM forecast and advice (core.training.vram_advice), made off the GUI
thread for the Parameters and Training tabs' panels and the check before Start.

One plain Python thread does the work, one job at a time, and only *emits* the relay's signals
(queued to the GUI thread, as gui.worker does); no Qt object is made or freed there. Edits are
debounced (:data:`DEBOUNCE_MS`); a newer config wins: a job waiting for the thread is replaced,
an advice search under way stops at its next forecast, and any answer about an older config is
dropped on arrival. Nothing is computed while no panel is visible and nobody asks.

The card is the first CUDA GPU when there is one (asked once, in the thread: it imports torch),
else a size the person chooses; the choice is remembered in the app's settings.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from core.config.schema import TrainConfig
from core.training.vram_advice import (DEFAULT_CARD_GB, AdviceCancelled, Card, VramAdvice, advise, chosen_card,
                                       detected_card, forecast_for)
from gui.project import Project
from gui.settings import settings

DEBOUNCE_MS = 1000  # a forecast takes seconds: wait for typing to pause
CARD_SETTING = "vram/card_gb"  # 0: the detected card; else a size in GB


@dataclass(frozen=True)
class ForecastInputs:
    """What a forecast is of: a copy of the config, the dataset's image sizes and subsets (from
    the plan, None without one), and a key that tells two such apart."""

    config: TrainConfig
    sizes: tuple[tuple[int, int], ...] | None
    subsets: tuple[Any, ...] | None
    key: str


def inputs_of(config: TrainConfig, sizes: tuple[tuple[int, int], ...] | None,
              subsets: tuple[Any, ...] | None) -> ForecastInputs:
    config = copy.deepcopy(config)
    key = hashlib.sha1(repr((config, sizes, subsets)).encode("utf-8")).hexdigest()
    return ForecastInputs(config, sizes, subsets, key)


@dataclass(frozen=True)
class VramState:
    """The forecaster's answer about one config: the forecast, then the advice when it does not
    fit the card; or why there is none."""

    key: str
    card: Card
    forecast: Any = None  # VramForecast
    advice: VramAdvice | None = None  # None while the changes that fit are being looked for
    error: str = ""  # why there is no forecast
    advice_error: str = ""  # why the search for changes failed (the forecast stands)

    @property
    def fits(self) -> bool | None:
        return None if self.forecast is None else self.forecast.driver <= self.card.total_bytes

    @property
    def complete(self) -> bool:
        """Everything the Start check needs: an error, a forecast that fits, or the advice."""
        return bool(self.error) or self.fits is True or (self.advice is not None
                                                         and self.advice.card_bytes == self.card.total_bytes)


class _Relay(QObject):
    detected = Signal(object)  # Card or None
    forecast_done = Signal(int, object, str)  # generation, VramForecast or None, error
    advice_done = Signal(int, object, object, str)  # generation, card bytes (past 2**31), VramAdvice or None, error


class _Runner:
    """One thread, started when there is work and ended when there is none; the newest job
    replaces one that has not started."""

    def __init__(self, relay: _Relay, detect: Callable[[], Card | None]) -> None:
        self._relay, self._detect = relay, detect
        self._lock = threading.Lock()
        self._emit_lock = threading.Lock()
        self._pending: Callable[[], None] | None = None
        self._running = False
        self._detected = False
        self.latest = 0  # the newest generation: older advice searches stop
        self.stopped = False
        self.thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            self._pending = job
            if self._running:
                return
            self._running = True
        # Not a daemon: Python waits for it at exit (at most one forecast; a search for changes
        # stops at its next one). A daemon thread still inside torch's C++ code when the
        # interpreter ends is torn down there, and the process aborts ("terminate called").
        self.thread = threading.Thread(target=self._main, name="lorakiln-vram", daemon=False)
        self.thread.start()

    def _main(self) -> None:
        if not self._detected:
            self._detected = True
            try:
                card = self._detect()
            except Exception:  # noqa: BLE001 - no card found: the person chooses a size
                card = None
            self.emit(self._relay.detected, card)
        while True:
            with self._lock:
                job, self._pending = self._pending, None
                if job is None or self.stopped:
                    self._running = False
                    return
            job()

    def emit(self, signal: Any, *args: Any) -> None:
        with self._emit_lock:  # stop() waits for an emission under way: the relay outlives it
            if self.stopped:
                return
            try:
                signal.emit(*args)
            except RuntimeError:  # the forecaster went away while the job ran
                pass

    def stop(self) -> None:
        """No emission after this returns (called as the forecaster, and so the relay, goes)."""
        with self._emit_lock:
            self.stopped = True


_RUNNERS: weakref.WeakSet[_Runner] = weakref.WeakSet()


def shutdown_all(timeout: float = 120.0) -> None:
    """Stop every forecaster's thread and wait for a forecast under way to end: tests call it
    after each Qt test, so that no window left open by one test forecasts (runs the U-Net on
    the meta device) while the next one spies on the U-Net."""
    runners = list(_RUNNERS)
    for runner in runners:
        runner.stop()
    for runner in runners:
        if runner.thread is not None:
            runner.thread.join(timeout)


class VramForecaster(QObject):
    updated = Signal()  # the state, the card or the pending flag changed

    def __init__(self, project: Project, parent: QObject | None = None, *,
                 forecast: Callable[..., Any] = forecast_for, detect: Callable[[], Card | None] = detected_card,
                 advise_fn: Callable[..., VramAdvice] = advise) -> None:
        super().__init__(parent)
        self.project = project
        self._forecast, self._advise = forecast, advise_fn
        self._relay = _Relay(self)
        self._relay.detected.connect(self._on_relay_detected)
        self._relay.forecast_done.connect(self._on_relay_forecast_done)
        self._relay.advice_done.connect(self._on_relay_advice_done)
        self._runner = _Runner(self._relay, detect)
        runner = self._runner
        _RUNNERS.add(runner)
        self.destroyed.connect(lambda *_: runner.stop())
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self._on_timer_timeout)
        self._detected: Card | None = None
        self._sizes: tuple[tuple[int, int], ...] | None = None
        self._subsets: tuple[Any, ...] | None = None
        self._watchers = 0
        self._generation = 0
        self._inputs: ForecastInputs | None = None  # what the newest job is about
        self.state: VramState | None = None  # the newest answer (about self._inputs once it comes)
        project.changed.connect(self._on_project_changed)
        project.loaded.connect(self._on_project_loaded)

    # ---------------------------------------------------------------- the card
    @property
    def detected(self) -> Card | None:
        return self._detected

    def card_choice(self) -> int:
        """0 for the detected card, else the chosen size in GB."""
        try:
            choice = int(settings().value(CARD_SETTING, 0) or 0)
        except (TypeError, ValueError):
            choice = 0
        return 0 if choice == 0 and self._detected is not None else choice or DEFAULT_CARD_GB

    def card(self) -> Card:
        choice = self.card_choice()
        return self._detected if choice == 0 and self._detected is not None else chosen_card(choice)

    def set_card_choice(self, size_gb: int) -> None:
        if size_gb == self.card_choice():
            return
        settings().setValue(CARD_SETTING, int(size_gb))
        self._card_changed()

    # ---------------------------------------------------------------- inputs
    def set_plan(self, plan: Any) -> None:
        """The Dataset tab's plan (a DatasetPlan, or None): its images' sizes decide the
        largest bucket, its subsets whether captions can be cached."""
        if plan is None:
            sizes, subsets = None, None
        else:
            sizes = tuple(sorted({tuple(image.record.size) for image in plan.images})) or None
            subsets = tuple(copy.deepcopy([s.params for s in plan.subsets])) or None
        if (sizes, subsets) != (self._sizes, self._subsets):
            self._sizes, self._subsets = sizes, subsets
            self._schedule()

    def inputs(self, config: TrainConfig | None = None) -> ForecastInputs:
        return inputs_of(self.project.config if config is None else config, self._sizes, self._subsets)

    # ---------------------------------------------------------------- asking
    def watch(self, visible: bool) -> None:
        """A panel shown (True) or hidden (False): forecasts are made while one is visible."""
        self._watchers = max(0, self._watchers + (1 if visible else -1))
        if visible and self._stale():
            self._schedule()

    @property
    def pending(self) -> bool:
        """An edit waits for its forecast, or a job is under way."""
        return self._timer.isActive() or self._busy()

    def refresh_now(self, config: TrainConfig | None = None) -> ForecastInputs:
        """Forecast ``config`` (the project's) now, unless that is done or under way."""
        self._timer.stop()
        inputs = self.inputs(config)
        if self._inputs is None or inputs.key != self._inputs.key or \
                (self.state is not None and self.state.key == inputs.key and self.state.error):
            self._start(inputs)
        return inputs

    def state_for(self, key: str) -> VramState | None:
        return self.state if self.state is not None and self.state.key == key else None

    def shutdown(self) -> None:
        """Drop any work: answers still under way are not delivered."""
        self._runner.stop()
        self._timer.stop()

    # ---------------------------------------------------------------- jobs
    def _stale(self) -> bool:
        return self._inputs is None or self._inputs.key != self.inputs().key

    def _busy(self) -> bool:
        return self._inputs is not None and (self.state is None or self.state.key != self._inputs.key
                                             or not self.state.complete)

    def _schedule(self) -> None:
        if self._watchers > 0:
            self._timer.start()
            self.updated.emit()

    def _start(self, inputs: ForecastInputs) -> None:
        self._generation += 1
        generation = self._runner.latest = self._generation
        self._inputs = inputs
        runner, relay, forecast = self._runner, self._relay, self._forecast

        def job() -> None:
            if runner.latest != generation:
                return
            try:
                result, error = forecast(inputs.config, inputs.sizes, inputs.subsets), ""
            except Exception as err:  # noqa: BLE001 - shown in the panel; a forecast never stops anything
                result, error = None, _reason(err)
            runner.emit(relay.forecast_done, generation, result, error)

        self._runner.submit(job)
        self.updated.emit()

    def _start_advice(self, state: VramState) -> None:
        inputs, generation, card_bytes = self._inputs, self._generation, state.card.total_bytes
        runner, relay, advise_fn, forecast = self._runner, self._relay, self._advise, self._forecast
        assert inputs is not None

        def job() -> None:
            if runner.latest != generation:
                return
            try:
                advice, error = advise_fn(inputs.config, card_bytes, sizes=inputs.sizes, subsets=inputs.subsets,
                                          forecast=state.forecast, forecast_fn=forecast,
                                          cancelled=lambda: runner.latest != generation or runner.stopped), ""
            except AdviceCancelled:
                return
            except Exception as err:  # noqa: BLE001 - the forecast stands; the advice says why it is missing
                advice, error = None, _reason(err)
            runner.emit(relay.advice_done, generation, card_bytes, advice, error)

        self._runner.submit(job)

    # ---------------------------------------------------------------- slots
    def _on_project_changed(self, _path: str) -> None:
        self._schedule()

    def _on_project_loaded(self) -> None:
        self._schedule()

    def _on_timer_timeout(self) -> None:
        if self._stale():
            self._start(self.inputs())

    def _on_relay_detected(self, card: Card | None) -> None:
        self._detected = card
        if card is not None:
            self._card_changed()

    def _on_relay_forecast_done(self, generation: int, forecast: Any, error: str) -> None:
        if generation != self._generation or self._inputs is None:
            return  # about a config edited since
        self.state = VramState(self._inputs.key, self.card(), forecast, None, error)
        if self.state.fits is False:
            self._start_advice(self.state)
        self.updated.emit()

    def _on_relay_advice_done(self, generation: int, card_bytes: int, advice: Any, error: str) -> None:
        state = self.state
        if generation != self._generation or state is None or card_bytes != self.card().total_bytes:
            return
        if advice is None:  # the search failed: an empty advice, with the reason, lets Start go on
            advice = VramAdvice(state.forecast, card_bytes, ())
        self.state = VramState(state.key, state.card, state.forecast, advice, advice_error=error)
        self.updated.emit()

    def _card_changed(self) -> None:
        state = self.state
        if state is not None and state.forecast is not None:
            self.state = VramState(state.key, self.card(), state.forecast)
            if self.state.fits is False:
                self._start_advice(self.state)
        self.updated.emit()


def _reason(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    last = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    where = f" ({last[0].name} in {last[0].filename.rsplit('/', 1)[-1]})" if last and not str(error).strip() else ""
    return text.splitlines()[0] + where
