"""What the screenshot scripts share: waiting for the app to reach a state."""

from __future__ import annotations

import time
from typing import Callable


def wait(app, done: Callable[[], bool], timeout_s: float) -> bool:  # noqa: ANN001 - QApplication
    """Process events until ``done()`` is true (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app.processEvents()
        if done():
            return True
        time.sleep(0.01)
    return False
