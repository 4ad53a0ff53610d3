"""One live process per run folder.

Two processes training into one folder interleave their step records and overwrite each
other's checkpoints; a resume of a run whose process is still going loses steps. So the
process that trains a run holds ``<run>/.lorakiln.lock`` for as long as it does: an
operating-system lock (released by the system when the process dies, however it dies)
on a file that also names the holder (pid, host, start time) for the message a second
process shows. A lock file left by a dead process is simply taken over; the lock file is deleted when
the process lets the folder go.

Where the file system offers no locks (some network drives), the holder's stamp decides:
a holder that is alive on this machine keeps the folder.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any

from core.system.processes import ALIVE, process_state, this_process

LOCK_FILE = ".lorakiln.lock"
# Windows locks are mandatory: the lock is on a byte far past the stamp, so other
# processes can still read who holds the folder.
_LOCKED_OFFSET = 1 << 20


class RunFolderBusy(RuntimeError):
    """Another live process is training in the run folder."""


class RunFolderLock:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self._created = False
        self.previous: dict[str, Any] | None = None  # the stamp of a dead holder it took over

    def acquire(self) -> RunFolderLock:
        """Take the folder, or raise RunFolderBusy naming the process that has it."""
        for _ in range(20):
            existed = self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                locked = _try_lock(fd)
                if locked and not _same_file(fd, self.path):
                    # Its holder deleted it between our open and our lock: lock the file now there.
                    _unlock(fd)
                    os.close(fd)
                    continue
                stamp = _read_stamp(fd)
                if locked is False or (locked is None and _held_by_other(stamp)):
                    raise RunFolderBusy(busy_message(self.run_dir, stamp))
                self.previous = stamp if stamp and stamp.get("pid") != os.getpid() else None
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, json.dumps({**this_process(), "locked_at": time.time()}).encode("utf-8"))
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd, self._created = fd, not existed
            return self
        raise RunFolderBusy(busy_message(self.run_dir, None))

    def release(self) -> None:
        """Give the folder up and delete the lock file, so a finished run (or a refused
        resume) leaves no trace. Deleting it while it is locked is safe: a process that
        opened it a moment before finds, once it has the lock, that the file is no longer
        the one in the folder and starts over (``acquire``). Windows cannot delete an open
        file, so there the file is emptied instead (or deleted after closing, when this
        lock created it)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.name == "nt":
                os.ftruncate(fd, 0)
            else:
                self.path.unlink(missing_ok=True)
        except OSError:
            pass
        _unlock(fd)
        os.close(fd)
        if os.name == "nt" and self._created:
            try:
                self.path.unlink(missing_ok=True)
            except OSError:
                pass

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunFolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def busy_message(run_dir: Path, stamp: dict[str, Any] | None) -> str:
    who = "another process"
    if stamp and isinstance(stamp.get("pid"), int):
        who = f"process {stamp['pid']}"
        if isinstance(stamp.get("host"), str):
            who += f" on {stamp['host']}"
        if isinstance(stamp.get("locked_at"), (int, float)):
            who += f" (since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(stamp['locked_at']))})"
    return (f"the run folder {run_dir} is in use by {who}, which is still training it. Nothing was "
            "changed. Wait for that run to end, or stop it (Stop in its window, or Ctrl+C where it runs), "
            "then resume.")


def holder(run_dir: Path) -> dict[str, Any] | None:
    """The stamp of the live process training ``run_dir``, or None. Reads the stamp only
    (taking the lock to look would refuse a process starting at that moment)."""
    try:
        with open(Path(run_dir) / LOCK_FILE, "rb") as handle:
            stamp = json.loads(handle.read(4096).decode("utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(stamp, dict) and process_state(stamp) == ALIVE:
        return stamp
    return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        mine, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _held_by_other(stamp: dict[str, Any] | None) -> bool:
    return bool(stamp) and stamp.get("pid") != os.getpid() and process_state(stamp) == ALIVE


def _read_stamp(fd: int) -> dict[str, Any] | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
        stamp = json.loads(data.decode("utf-8")) if data.strip() else None
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def _try_lock(fd: int) -> bool | None:
    """True when locked, False when another process holds the lock, None when this file
    system has no locks."""
    try:
        if os.name == "nt":
            import msvcrt

            os.lseek(fd, _LOCKED_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
            return False
        if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise


def _unlock(fd: int) -> None:
    try:
        if os.name == "nt":
            import msvcrt

            os.lseek(fd, _LOCKED_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass
