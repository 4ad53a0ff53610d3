"""What the engine's parts (checkpoints, sampling) call back into the run for: a status line,
the run folder made again if it was deleted, a metrics record, an event to the sink."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class RunCalls:
    status: Callable[[str, str], None]  # (text, phase)
    ensure_run_dir: Callable[[], None]
    record: Callable[[dict[str, Any]], None]
    emit: Callable[[Any], None]  # a core.training.events event; only the main process emits
