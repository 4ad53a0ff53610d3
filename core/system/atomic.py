"""Write files so that a crash or a full disk never leaves a half-written file behind."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

# mkstemp's names below: ".<target name>.<random>.tmp".
TEMPORARY_SUFFIX = ".tmp"
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``.

    The rename is atomic on the same file system, so readers see the old file or the
    new one, never a mix; on any error the temporary file is removed and the old file
    is left exactly as it was.
    """
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMPORARY_SUFFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException as error:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError) and error.filename is None:
            # A failed write() (a full disk) names no file; the person needs to know which.
            error.filename = str(target)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def remove_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that writes into ``folder`` left behind when their process
    was killed before the rename (a checkpoint's can be hundreds of MB). Only for a folder
    no other process is writing into, such as a run folder being resumed."""
    removed = []
    base = Path(folder)
    if not base.is_dir():
        return removed
    for path in base.iterdir():
        if _TEMPORARY.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
