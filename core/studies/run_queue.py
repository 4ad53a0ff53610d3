"""The training queue: configurations waiting to train one after another (overnight runs).

The queue is one JSON file (``<user data>/queue.json``) shared by the desktop app and
``lorakiln queue``, which may run at the same time. Every change is one transaction under a
lock file beside it (``queue.json.lock``): take the lock, read the file as it is now, apply
the change, save atomically, release. So two processes adding at once both keep their item,
and a runner takes the next item by marking it running, stamped with its process, in one
such step: two runners never train the same item. Each item holds a full snapshot of its
configuration, so editing the project afterwards does not change what is queued. Running the
items is ``core.studies.queue_runner``'s job.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from core.system.atomic import write_text_atomic
from core.config.schema import TrainConfig
from core.system.paths import user_data_dir
from core.config.presets import dumps_preset, loads_preset
from core.system.processes import ALIVE, process_state, this_process
from core.studies.sweep import SweepSpec, sweep_configs, write_sweep_record

log = logging.getLogger("lorakiln.queue")

QUEUE_FILE = "queue.json"
QUEUE_VERSION = 1
PENDING, RUNNING = "pending", "running"
# How an item ended: the engine's Finished reasons, "failed", and "interrupted" for an item
# that was running when the process that ran it died (its run folder can be resumed).
ENDED = ("completed", "stopped", "cancelled", "failed", "interrupted")
STATUSES = (PENDING, RUNNING, *ENDED)
# A change holds the lock for milliseconds; waiting this long means the holder is stuck.
LOCK_WAIT_SECONDS = 30.0


class QueueError(ValueError):
    """A queue operation that cannot be done (unknown item, item running, queue busy)."""


@dataclass
class QueueItem:
    id: str
    label: str
    config_toml: str  # the full configuration (every field), as a run folder's config.toml
    description: str
    sweep_id: str | None
    status: str
    run_dir: str | None
    message: str
    added_at: float
    # The process running the item (core.system.processes stamp) while it is "running", else None.
    claimed_by: dict[str, Any] | None = None


def how_to_continue(run_dir: str | None) -> str:
    from core.training.checkpoint import how_to_continue as advice  # torch: not at import (lorakiln --help)

    return advice(run_dir)


def _item_from_json(data: Any, runner: Any) -> QueueItem:
    """Raises ValueError when ``data`` is not a queue item this version can use. ``runner`` is
    the document's runner, the claim of a running item saved before items had their own."""
    if not isinstance(data, dict):
        raise ValueError("an item is not a JSON object")
    kinds = {"id": str, "label": str, "config_toml": str, "description": str, "sweep_id": (str, type(None)),
             "status": str, "run_dir": (str, type(None)), "message": str, "added_at": (int, float)}
    for name, kind in kinds.items():
        if not isinstance(data.get(name), kind):
            raise ValueError(f"item {data.get('id', '?')!r}: '{name}' is missing or of the wrong kind")
    if data["status"] not in STATUSES:
        raise ValueError(f"item {data['id']!r}: unknown status {data['status']!r}")
    item = QueueItem(**{f.name: data[f.name] for f in fields(QueueItem) if f.name != "claimed_by"})
    if item.status == RUNNING:
        # A malformed claim is not worth losing the queue over: it counts as a process that has ended.
        claim = data.get("claimed_by", runner)
        item.claimed_by = claim if isinstance(claim, dict) else None
    return item


def _is_alive(claim: Any) -> bool:
    """Whether the stamped process still runs (the same pid and start time on this machine,
    so a reused pid after a reboot does not count)."""
    return process_state(claim) == ALIVE


def _is_this_process(claim: Any) -> bool:
    return _is_alive(claim) and claim.get("pid") == os.getpid()


class RunQueue:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[QueueItem] = []
        # sweep id -> {"field", "values", and "record" (the sweep record's path) once written}
        self.sweeps: dict[str, dict[str, Any]] = {}
        self.load_problem: str | None = None
        self._seen: tuple[int, int, int] | None = None  # (inode, mtime_ns, size) of the file we last read or wrote
        self._in_change = False  # True while this object holds the lock, in a change

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(f"{self.path.name}.lock")

    # ------------------------------------------------------------------ reading, locking and saving
    @classmethod
    def load(cls, path: Path | None = None) -> RunQueue:
        """The queue in ``path`` (default ``<user data>/queue.json``); empty when there is none.
        An unreadable file is kept aside and reported in ``load_problem``; never raises for it."""
        queue = cls(Path(path) if path is not None else user_data_dir() / QUEUE_FILE)
        queue._refresh()
        return queue

    def reload(self) -> None:
        """Pick up changes another process (the app, ``lorakiln queue``) saved since we last looked,
        and items whose runner has ended since."""
        if self._signature() != self._seen or self._left_by_ended_process():
            self._refresh()

    def _signature(self) -> tuple[int, int, int] | None:
        # The inode as well: every save is a new file, and two saves within one clock tick can
        # leave the same time and size.
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def _refresh(self) -> None:
        """Read the file without the lock (a save replaces it whole, so a read sees one version or
        the next); what needs repairing (an unreadable file, items left running by a process that
        has ended) is repaired under the lock, after reading the file again."""
        problem = self._read()
        if problem is None and not self._left_by_ended_process():
            return
        try:
            with self._changing():
                pass
        except (QueueError, OSError) as err:  # shown as read; the repair is tried again next time
            log.warning("the queue file %s could not be repaired now: %s", self.path, err)
            if problem is not None:
                self.load_problem = (f"the queue file {self.path} could not be read ({problem}) and could not be "
                                     f"moved aside ({err}); the queue shows empty")

    def _read(self) -> str | None:
        """Replace the items with the file's; returns why the file could not be read, if it could
        not (the items are then empty). No file is an empty queue."""
        signature = self._signature()
        self.items, self.sweeps, self._seen = [], {}, None
        if signature is None:
            return None
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
            version = document.get("version")
            if not isinstance(version, int) or version < 1:
                raise ValueError(f"unknown version {version!r}")
            if version > QUEUE_VERSION:
                raise ValueError(f"written by a newer LoRA Kiln (queue version {version})")
            if not isinstance(document.get("items", []), list):
                raise ValueError("'items' is not a JSON list")
            items = [_item_from_json(d, document.get("runner")) for d in document.get("items", [])]
            sweeps = document.get("sweeps", {})
            if not isinstance(sweeps, dict):
                raise ValueError("'sweeps' is not a JSON object")
        except FileNotFoundError:  # removed since the stat: an empty queue
            return None
        except (OSError, ValueError) as err:  # JSONDecodeError is a ValueError
            return str(err)
        self.items, self.sweeps, self._seen = items, sweeps, signature
        return None

    def _left_by_ended_process(self) -> list[QueueItem]:
        return [item for item in self.items if item.status == RUNNING and not _is_alive(item.claimed_by)]

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """One read-modify-write of the file: under the lock, read it as it is now (never trust
        what this object read before: another process may have saved since), let the caller
        change the items, and save if anything changed. An exception saves nothing. A change
        made inside a change is part of it (the outer one reads and saves)."""
        if self._in_change:
            yield
            return
        lock = self._acquire_lock()
        self._in_change = True
        try:
            problem = self._read()
            if problem is not None:
                self._set_aside(problem)
            before = self._document() if self._seen is not None else None
            for item in self._left_by_ended_process():  # its run folder can be resumed
                item.status, item.claimed_by = "interrupted", None
                item.message = f"LoRA Kiln ended while this run was training; {how_to_continue(item.run_dir)}"
            yield
            if self._document() != before and (self._seen is not None or self.items or self.sweeps):
                self._save()
        finally:
            self._in_change = False
            lock.release()

    def _acquire_lock(self) -> FileLock:
        """The queue's lock file, held; another process waits here, up to LOCK_WAIT_SECONDS."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A new lock object each time: one made before a fork must not be used by the child.
        lock = FileLock(str(self.lock_path), timeout=LOCK_WAIT_SECONDS)
        try:
            lock.acquire()
        except Timeout:
            raise QueueError(f"the queue file {self.path} stayed locked by another LoRA Kiln process for "
                             f"{LOCK_WAIT_SECONDS:g} s (lock file {self.lock_path}); nothing was changed. Try again; "
                             "if it stays locked, end the LoRA Kiln process that hangs") from None
        return lock

    def _set_aside(self, reason: str) -> None:
        aside = self.path.with_name(f"{self.path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            self.path.replace(aside)
            kept = f"it was kept as {aside}"
        except OSError as err:
            kept = f"it could not be moved aside ({err.strerror or err}) and will be overwritten"
        self.load_problem = f"the queue file {self.path} could not be read ({reason}); {kept}; the queue starts empty"
        log.warning("%s", self.load_problem)

    def _document(self) -> dict[str, Any]:
        running = next((item.claimed_by for item in self.items if item.status == RUNNING and item.claimed_by), None)
        # "runner" is what LoRA Kiln read before items had their own claim.
        return {"version": QUEUE_VERSION, "runner": running, "sweeps": copy.deepcopy(self.sweeps),
                "items": [asdict(item) for item in self.items]}

    def _save(self) -> None:
        write_text_atomic(self.path, json.dumps(self._document(), indent=1, ensure_ascii=False) + "\n")
        self._seen = self._signature()

    # ------------------------------------------------------------------ looking up
    def get(self, item_id: str) -> QueueItem:
        for item in self.items:
            if item.id == item_id:
                return item
        raise QueueError(f"no queue item '{item_id}' (it may have been removed)")

    def index_of(self, item_id: str) -> int:
        return self.items.index(self.get(item_id))

    def next_pending(self) -> QueueItem | None:
        """The item a runner would take next (only a look: ``claim_next`` takes it)."""
        self.reload()
        return next((item for item in self.items if item.status == PENDING), None)

    def config_of(self, item: QueueItem) -> TrainConfig:
        """The item's configuration; raises PresetError (naming the item) when it no longer loads."""
        return loads_preset(item.config_toml, source=f"queue item '{item.label}' ({item.id})").config

    def busy_elsewhere(self) -> bool:
        """True while another live process is training an item of this queue."""
        self.reload()
        return self._running_elsewhere() is not None

    def _running_elsewhere(self) -> QueueItem | None:
        return next((item for item in self.items if item.status == RUNNING and _is_alive(item.claimed_by)
                     and not _is_this_process(item.claimed_by)), None)

    # ------------------------------------------------------------------ changing
    def claim_next(self) -> QueueItem | None:
        """Take the first pending item for this process: it is marked running, stamped with this
        process, in the same locked step that finds it, so no other process can take it too.
        None when nothing is pending. Raises QueueError while another live process is training
        an item of this queue: one queue trains one run at a time (they share the GPU)."""
        with self._changing():
            busy = self._running_elsewhere()
            item = None if busy else next((item for item in self.items if item.status == PENDING), None)
            if item is not None:
                item.status, item.message, item.claimed_by = RUNNING, "", this_process()
        if busy is not None:  # raised after the change, so items found interrupted are saved as such
            pid = busy.claimed_by["pid"] if busy.claimed_by else "?"
            raise QueueError(f"the queue is being run by another LoRA Kiln process (pid {pid}, training "
                             f"'{busy.label}'); wait for it to finish or stop it there")
        return item

    def _new_id(self) -> str:
        taken = {item.id for item in self.items}
        while (new := uuid.uuid4().hex[:8]) in taken:
            pass
        return new

    def _make_item(self, config: TrainConfig, label: str, description: str, sweep_id: str | None) -> QueueItem:
        return QueueItem(id=self._new_id(), label=label or config.output.output_name,
                         config_toml=dumps_preset(config, sparse=False, description=description),
                         description=description, sweep_id=sweep_id, status=PENDING, run_dir=None,
                         message="", added_at=time.time())

    def add(self, config: TrainConfig, label: str = "", description: str = "",
            sweep_id: str | None = None) -> QueueItem:
        """Queue a snapshot of ``config`` at the end (label defaults to the LoRA's name)."""
        with self._changing():
            item = self._make_item(config, label, description, sweep_id)
            self.items.append(item)
        return item

    def add_sweep(self, base: TrainConfig, spec: SweepSpec, description: str = "") -> tuple[str, list[QueueItem]]:
        """Queue one item per value of ``spec``; raises SweepError (nothing queued) on any problem."""
        configs = sweep_configs(base, spec)
        with self._changing():
            sweep_id = self._new_id()
            items = [self._make_item(config, label, description, sweep_id) for label, config in configs]
            self.sweeps[sweep_id] = {"field": spec.field, "values": list(spec.values)}
            self.items += items
        return sweep_id, items

    def remove(self, item_id: str) -> None:
        with self._changing():
            item = self.get(item_id)
            if item.status == RUNNING:
                raise QueueError(f"'{item.label}' is training; stop it before removing it from the queue")
            self.items.remove(item)
            if item.sweep_id:
                self._finish_sweep_if_done(item.sweep_id)
            self._forget_empty_sweeps()

    def move(self, item_id: str, new_index: int) -> None:
        """Move an item to ``new_index`` (0-based; clamped to the list)."""
        with self._changing():
            item = self.get(item_id)
            self.items.remove(item)
            self.items.insert(max(0, min(new_index, len(self.items))), item)

    def mark(self, item_id: str, status: str, run_dir: str | None = None, message: str = "") -> None:
        """Record an item's state; ``run_dir`` None keeps the one already recorded. Marked running,
        the item is this process's; marked anything else, no process's."""
        if status not in STATUSES:
            raise ValueError(f"unknown queue status {status!r}; expected one of {', '.join(STATUSES)}")
        with self._changing():
            item = self.get(item_id)
            item.status, item.message = status, message
            if run_dir:
                item.run_dir = str(run_dir)
            if status != RUNNING:
                item.claimed_by = None
            elif not _is_this_process(item.claimed_by):
                item.claimed_by = this_process()
            if item.sweep_id and status in ENDED:
                self._finish_sweep_if_done(item.sweep_id)

    def clear_finished(self) -> int:
        """Remove every item that has ended; returns how many were removed."""
        with self._changing():
            before = len(self.items)
            self.items = [item for item in self.items if item.status in (PENDING, RUNNING)]
            self._forget_empty_sweeps()
        return before - len(self.items)

    # ------------------------------------------------------------------ sweeps
    def sweep_items(self, sweep_id: str) -> list[QueueItem]:
        return [item for item in self.items if item.sweep_id == sweep_id]

    def sweep_record_path(self, sweep_id: str) -> Path | None:
        """The sweep record written when the sweep's last item ended, if it has."""
        sweep = self.sweeps.get(sweep_id)
        record = sweep.get("record") if isinstance(sweep, dict) else None
        return Path(record) if isinstance(record, str) else None

    def _forget_empty_sweeps(self) -> None:
        """A sweep whose items have all been removed needs no entry (its record file stays)."""
        left = {item.sweep_id for item in self.items}
        self.sweeps = {key: value for key, value in self.sweeps.items() if key in left}

    def _finish_sweep_if_done(self, sweep_id: str) -> None:
        """When no item of a sweep is left to run, write its sweep record beside the runs."""
        sweep = self.sweeps.get(sweep_id)
        items = self.sweep_items(sweep_id)
        if not isinstance(sweep, dict) or "record" in sweep or any(i.status in (PENDING, RUNNING) for i in items):
            return
        run_dirs = [Path(i.run_dir) for i in items if i.run_dir]
        if not run_dirs:
            return
        try:
            spec = SweepSpec(str(sweep["field"]), tuple(str(v) for v in sweep["values"]))
            sweep["record"] = str(write_sweep_record(run_dirs[0].parent, spec, run_dirs))
        except (OSError, KeyError, TypeError) as err:  # the runs themselves are safe; only the index is missing
            log.warning("could not write the record of sweep %s: %s", sweep_id, err)
