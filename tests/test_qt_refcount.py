"""The pinned PySide6 must not leak references to None/True: PySide6 6.12's abi3 wheels do
on Python 3.11 (every void call and every emit drops one), and after a few thousand calls
the interpreter aborts with 'none_dealloc'. This guards the pin."""

import sys

from PySide6.QtCore import QObject, Signal


class _Emitter(QObject):
    ping = Signal(int)


def test_qt_calls_and_signals_keep_reference_counts_of_none_and_true():
    emitter = _Emitter()
    before = sys.getrefcount(None), sys.getrefcount(True)
    for _ in range(2000):
        emitter.setObjectName("probe")
        emitter.ping.emit(1)
    after = sys.getrefcount(None), sys.getrefcount(True)
    assert after[0] >= before[0] - 10 and after[1] >= before[1] - 10, (before, after)
