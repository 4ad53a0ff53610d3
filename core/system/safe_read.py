"""Reading a file that a config names: only a regular file, only so much of it.

A path in a config can name anything. /dev/zero never ends, so reading it fills memory;
opening a FIFO waits for a writer that never comes; a directory or a large unrelated file
is no prompt list. So a file is read only after the file system says it is a regular
file, and at most ``limit`` bytes of it; a refusal names the file, the setting that named
it and what to do.
"""

from __future__ import annotations

import codecs
import os
import re
import stat
from typing import BinaryIO

KiB = 1024
MiB = 1024 * KiB

# Opening a FIFO without O_NONBLOCK blocks until a writer opens it, before any check of
# the opened file can run; with it, open() returns at once and fstat() tells. No effect on
# a regular file. (Windows has neither FIFOs nor the flag.)
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
               | getattr(os, "O_CLOEXEC", 0))
# Control characters that no text file a person writes contains (tab, line breaks, form
# feed and vertical tab are allowed); one of them means binary content, not text.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f]")


class FileRefused(OSError):
    """A file that is not read; ``reason`` says why and what to do.

    An OSError, so code that already handles a file it cannot read handles this one too.
    ``missing`` is True when there is no such file (a config from another machine names
    paths of that machine, which is no fault of the config).
    """

    def __init__(self, path: str | os.PathLike[str], what: str, reason: str, *, missing: bool = False) -> None:
        where = f"{what}: {path}" if what else str(path)
        super().__init__(f"{where}: {reason}")
        self.strerror = reason  # what handlers of OSError show after the file's name
        self.path = str(path)
        self.what = what
        self.reason = reason
        self.missing = missing

    def __str__(self) -> str:  # OSError's own __str__ would show "[Errno None]"
        return str(self.args[0])


def size_text(size: int) -> str:
    """A byte count as a person reads it: "412 bytes", "3.5 KiB", "2 MiB"."""
    if size < KiB:
        return f"{size} bytes"
    value, unit = (size / KiB, "KiB") if size < MiB else (size / MiB, "MiB")
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"


def _not_regular(mode: int) -> str | None:
    """Why a file of this mode is not read, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file; name the file inside it"
    if stat.S_ISFIFO(mode):
        return ("is a named pipe (FIFO), not a file: reading it would wait for a writer; "
                "name a text file")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return ("is a device, not a file (a device such as /dev/zero or /dev/random never ends); "
                "name a text file")
    if stat.S_ISSOCK(mode):
        return "is a socket, not a file; name a text file"
    return "is not a regular file; name a text file"


def open_regular(path: str | os.PathLike[str], what: str = "") -> BinaryIO:
    """Open ``path`` for reading if it is a regular file; FileRefused naming it if not.

    The kind is checked before opening (opening some devices has effects of its own) and
    again on the open file, so a file swapped for a FIFO or device in between is refused
    too, without hanging.
    """
    try:
        before = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise FileRefused(path, what, "not found", missing=True) from None
    except OSError as err:
        raise FileRefused(path, what, f"cannot be read ({err.strerror or err})") from None
    except ValueError:  # a NUL character in the name
        raise FileRefused(path, what, "is not a possible file name (it holds a NUL character)",
                          missing=True) from None
    reason = _not_regular(before.st_mode)
    if reason:
        raise FileRefused(path, what, reason)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as err:
        raise FileRefused(path, what, f"cannot be read ({err.strerror or err})",
                          missing=isinstance(err, FileNotFoundError)) from None
    try:
        reason = _not_regular(os.fstat(fd).st_mode)
        if reason:
            raise FileRefused(path, what, reason)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(path: str | os.PathLike[str], *, limit: int, what: str = "") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; FileRefused otherwise."""
    with open_regular(path, what) as handle:
        size = os.fstat(handle.fileno()).st_size
        # Read one byte past the limit: a file that grows after the size check is caught too.
        data = b"" if size > limit else handle.read(limit + 1)
    if size > limit or len(data) > limit:
        raise FileRefused(path, what, f"is {max(size, len(data)):,} bytes, more than the {size_text(limit)} "
                                      "allowed here; is it the right file?")
    return data


def decode_text(data: bytes, path: str | os.PathLike[str], what: str = "") -> str:
    """``data`` as UTF-8 text (a BOM is dropped); FileRefused for anything that is not text."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise FileRefused(path, what, "is UTF-16 text; save it as UTF-8")
    if b"\x00" in data:
        raise FileRefused(path, what, "holds NUL bytes, so it is a binary file, not text; name a text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise FileRefused(path, what, f"is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
                                      "save it as UTF-8, or check that it is the right file") from None
    control = _CONTROL.search(text)
    if control:
        line = text.count("\n", 0, control.start()) + 1
        raise FileRefused(path, what, f"holds a control character (U+{ord(control.group()):04X}) on line {line}, "
                                      "so it is binary content, not text; name a text file")
    return text


def read_text_file(path: str | os.PathLike[str], *, limit: int, what: str = "") -> str:
    """A regular file of at most ``limit`` bytes of UTF-8 text; FileRefused naming it otherwise."""
    return decode_text(read_regular_bytes(path, limit=limit, what=what), path, what)
