"""Which process is doing something, and whether it still is: for a queue being run and a
run being trained, so that work left behind by a killed or crashed process is told apart
from work that is still going."""

from __future__ import annotations

import math
import socket
from typing import Any

import psutil

ALIVE, GONE, UNKNOWN = "alive", "gone", "unknown"
# Above any pid an operating system hands out (Linux: 2**22, Windows: 32-bit), below the
# sizes psutil cannot pass to the system.
MAX_PID = 2**32


def this_process() -> dict[str, Any]:
    """A stamp for this process: pid, host and start time (a pid alone may be reused)."""
    process = psutil.Process()
    return {"pid": process.pid, "host": socket.gethostname(), "started": process.create_time()}


def process_state(stamp: Any) -> str:
    """ALIVE when the stamped process still runs; GONE when it ran on this machine and has
    ended (or its pid now belongs to another process); UNKNOWN when the stamp is missing or
    malformed (a pid that is not a positive whole number, a start time that is not a finite
    number), or names another machine (a run folder on a shared drive). Never raises: the
    stamp comes from a file anyone may have edited or damaged."""
    if not isinstance(stamp, dict) or not isinstance(stamp.get("host"), str):
        return UNKNOWN
    if stamp["host"] != socket.gethostname():
        return UNKNOWN
    pid, started = stamp.get("pid"), stamp.get("started")
    # psutil refuses pids below 0 with ValueError and pid 0 is the kernel's, not a trainer's.
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < MAX_PID:
        return UNKNOWN
    if not isinstance(started, (int, float)) or isinstance(started, bool):
        return UNKNOWN
    try:
        started = float(started)
    except OverflowError:  # a whole number too large for a float
        return UNKNOWN
    if not math.isfinite(started):
        return UNKNOWN
    try:
        return ALIVE if abs(psutil.Process(pid).create_time() - started) < 1.0 else GONE
    except psutil.NoSuchProcess:
        return GONE
    except (psutil.Error, OSError, ValueError, OverflowError):
        return UNKNOWN
