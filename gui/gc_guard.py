"""Garbage collection in the GUI thread only.

Python's cyclic garbage collector runs in whichever thread happens to allocate when a
threshold is crossed. In a Qt app with background threads (training, grids, scans) that
means a cycle holding Qt objects can be destroyed in a thread that is not theirs, which Qt
does not allow: it can deadlock the GUI thread against the training thread. So while the
guard is held, automatic collection is off and a timer in the GUI thread does the same work
the interpreter would, with the interpreter's own thresholds.

The app holds it for its whole life (gui.app.make_app); the training worker holds it for
each run, so a worker used on its own (tests) is covered too. Holds nest.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer

CHECK_INTERVAL_MS = 250


class GuiGarbageCollector(QObject):
    def __init__(self) -> None:
        super().__init__()
        self._holds = 0
        self._was_enabled = True
        self._timer = QTimer(self)
        self._timer.setInterval(CHECK_INTERVAL_MS)
        self._timer.timeout.connect(self._on_timer_timeout)

    @property
    def held(self) -> bool:
        return self._holds > 0

    def hold(self) -> None:
        """Take over collection (call from the GUI thread)."""
        if self._holds == 0:
            self._was_enabled = gc.isenabled()
            gc.disable()
            self._timer.start()
        self._holds += 1

    def release(self) -> None:
        """End one hold with a full collection here, so what the background work left in
        reference cycles (a finished run's model, say) is freed now, in this thread, even
        while an outer hold (the app's) goes on; the last hold gives collection back."""
        if self._holds == 0:
            return
        self._holds -= 1
        gc.collect()
        if self._holds == 0:
            self._timer.stop()
            if self._was_enabled:
                gc.enable()

    def _on_timer_timeout(self) -> None:
        self.collect_due()

    def collect_due(self) -> int | None:
        """Collect the generation the interpreter would collect now; None when none is due."""
        threshold0, threshold1, threshold2 = gc.get_threshold()
        count0, count1, count2 = gc.get_count()
        if count0 <= threshold0:
            return None
        generation = 0
        if count1 > threshold1:
            generation = 2 if count2 > threshold2 else 1
        gc.collect(generation)
        return generation


_collector: GuiGarbageCollector | None = None


def gui_collector() -> GuiGarbageCollector:
    """The one collector; the first call must come from the GUI thread (its timer lives there)."""
    global _collector
    if _collector is None:
        _collector = GuiGarbageCollector()
    return _collector
