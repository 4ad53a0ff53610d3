"""The folder of the run in progress: claimed and locked against other processes, its log
opened, and made again when something deletes it during training.

Only the main process has one; on the others ``path`` stays None.
"""

from __future__ import annotations

import logging
from pathlib import Path

from core.training.run_folder import LOG
from core.training.run_lock import RunFolderLock
from core.training.run_log import RunLog

log = logging.getLogger("lorakiln.run")


class RunFolderLost(OSError):
    """The run folder was deleted during training and could not be created again."""


class ActiveRunFolder:
    def __init__(self) -> None:
        self.path: Path | None = None  # set once the run writes to it
        self.log = RunLog()
        self._claimed: Path | None = None
        self._lock: RunFolderLock | None = None

    def claim(self, folder: Path) -> None:
        """Lock ``folder`` (a new run's, or the one resumed) against any other process."""
        self._lock = RunFolderLock(folder).acquire()
        if self._lock.previous is not None:
            log.info("took over the run folder from process %s, which is no longer running",
                     self._lock.previous.get("pid"))
        self._claimed = folder

    def open(self) -> Path:
        """Start writing to the claimed folder: its log first."""
        assert self._claimed is not None, "claim() the run folder before opening it"
        self.path = self._claimed
        self.log.open(self.path / LOG)
        return self.path

    def is_lost(self) -> bool:
        return self.path is not None and not self.path.is_dir()

    def make_again(self, step: int) -> None:
        """Create the deleted folder again with a new log and lock; RunFolderLost when it
        cannot be, saying exactly that."""
        lost = self.path
        assert lost is not None
        try:
            lost.mkdir(parents=True)
        except OSError as error:
            raise RunFolderLost(f"the run folder {lost} was deleted during training (at step {step}) and "
                                f"could not be created again ({error.strerror or error}); the LoRA trained so "
                                "far could not be saved") from None
        self.log.close_file()
        self.log.open(lost / LOG)
        if self._lock is not None:  # its file went with the folder
            self._lock.release()
            self._lock = RunFolderLock(lost).acquire()

    def release(self) -> None:
        """Stop logging to the folder and unlock it (the end of the run, however it ended)."""
        self.log.drop_buffer()
        self.log.close_file()
        if self._lock is not None:
            self._lock.release()
