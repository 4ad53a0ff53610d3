"""Which process is doing something, and whether it still is: for a queue being run and a
run being trained, so that work left behind by a killed or crashed process is told apart
from work that is still going."""

from __future__ import annotations

import socket
from typing import Any

import psutil

ALIVE, GONE, UNKNOWN = "alive", "gone", "unknown"


def this_process() -> dict[str, Any]:
    """A stamp for this process: pid, host and start time (a pid alone may be reused)."""
    process = psutil.Process()
    return {"pid": process.pid, "host": socket.gethostname(), "started": process.create_time()}


def process_state(stamp: Any) -> str:
    """ALIVE when the stamped process still runs; GONE when it ran on this machine and has
    ended (or its pid now belongs to another process); UNKNOWN when the stamp is missing or
    malformed, or names another machine (a run folder on a shared drive)."""
    if not isinstance(stamp, dict) or not isinstance(stamp.get("host"), str):
        return UNKNOWN
    if stamp["host"] != socket.gethostname():
        return UNKNOWN
    try:
        pid, started = int(stamp["pid"]), float(stamp["started"])
    except (KeyError, TypeError, ValueError):
        return UNKNOWN
    try:
        return ALIVE if abs(psutil.Process(pid).create_time() - started) < 1.0 else GONE
    except psutil.NoSuchProcess:
        return GONE
    except psutil.Error:
        return UNKNOWN
