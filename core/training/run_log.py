"""The run's log.txt: the "lorakiln" log, with the lines logged before the run folder existed
(validation, planning, the resume checks) written first, so the file tells the whole run."""

from __future__ import annotations

import logging
from pathlib import Path

_LOGGER = "lorakiln"


class _BufferHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < 10_000:
            self.records.append(record)


class RunLog:
    def __init__(self) -> None:
        self._early: _BufferHandler | None = None  # lines kept until the file is opened
        self._file: logging.Handler | None = None

    def buffer(self) -> None:
        """Keep the log lines of the time before the run folder is written, for its log.txt."""
        self._early = _BufferHandler()
        logging.getLogger(_LOGGER).addHandler(self._early)
        logging.getLogger(_LOGGER).setLevel(logging.INFO)

    def open(self, path: Path) -> None:
        """Log to ``path`` from now on, after the lines kept so far."""
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        early, self._early = self._early, None
        if early is not None:
            logging.getLogger(_LOGGER).removeHandler(early)
            for record in early.records:
                handler.handle(record)
        logging.getLogger(_LOGGER).addHandler(handler)
        logging.getLogger(_LOGGER).setLevel(logging.INFO)
        self._file = handler

    def close_file(self) -> None:
        if self._file is not None:
            logging.getLogger(_LOGGER).removeHandler(self._file)
            self._file.close()
            self._file = None

    def drop_buffer(self) -> None:
        if self._early is not None:
            logging.getLogger(_LOGGER).removeHandler(self._early)
            self._early = None
