"""Caption files and tags, read the way sd-scripts reads them.

sd-scripts uses the first line of a caption file, stripped, and counts tags per image by
splitting on commas. It only reads UTF-8 and stops on anything else; we also read UTF-16
(with a byte-order mark) and fall back to Windows-1252, which is what Notepad on older
Windows and many taggers wrote, and say so in a warning rather than refuse the dataset.
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Iterable

from core.system.safe_read import MiB, open_regular

_UTF8_BOM = codecs.BOM_UTF8
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
# The line breaks Python's text mode recognises, which is how sd-scripts finds line one.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

EMPTY_FILE_WARNING = "empty caption file"
BLANK_FIRST_LINE_WARNING = "the first line is empty (only the first line is used)"
LEGACY_ENCODING_WARNING = "read as Windows-1252; save it as UTF-8"
# Only the first 75 tokens of a caption train (a few hundred characters); 4 MiB is far
# beyond any caption and keeps a huge or runaway file from filling memory.
MAX_CAPTION_BYTES = 4 * MiB


def read_caption_file(path: str | os.PathLike[str]) -> tuple[str, str | None]:
    """Return (first line stripped, warning or None). Raises OSError if unreadable.

    Only a regular file is opened (a FIFO or device named like a caption would hang the
    scan or never end: safe_read.FileRefused, an OSError), and at most MAX_CAPTION_BYTES
    of it are read.
    """
    with open_regular(path, "caption") as fp:
        raw = fp.read(MAX_CAPTION_BYTES + 1)
    cut = len(raw) > MAX_CAPTION_BYTES
    if cut:
        raw = _whole_characters(raw[:MAX_CAPTION_BYTES])
    text, warning = decode_caption(raw)
    if cut and _LINE_BREAK.search(text) is None:
        warning = f"its first line is longer than {MAX_CAPTION_BYTES // MiB} MiB; only that much is read"
    if not text:
        return "", EMPTY_FILE_WARNING
    first = split_first_line(text)[0].strip()
    if not first and warning is None:
        warning = BLANK_FIRST_LINE_WARNING
    return first, warning


def split_first_line(text: str) -> tuple[str, str]:
    """(line one, everything from its line break on): what trains, and what the file keeps
    besides. Joining the two gives ``text`` back, so an editor of line one can save the
    rest unchanged, a trailing newline and CRLF included."""
    match = _LINE_BREAK.search(text)
    if match is None:
        return text, ""
    return text[:match.start()], text[match.start():]


def _whole_characters(raw: bytes) -> bytes:
    """``raw`` without a UTF-8 character cut short at its end.

    Otherwise the bytes would not decode as UTF-8 and the caption would be read as
    Windows-1252 instead.
    """
    for back in range(1, min(4, len(raw)) + 1):
        byte = raw[-back]
        if byte & 0xC0 != 0x80:  # ASCII or the first byte of a character: how long is it?
            length = 1 if byte < 0xC0 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return raw[:-back] if length > back else raw
    return raw


def decode_caption(raw: bytes) -> tuple[str, str | None]:
    """A caption file's bytes as text, and a warning when it was not UTF-8 or UTF-16."""
    if raw.startswith(_UTF16_BOMS):
        # The "utf-16" codec reads the BOM to pick the byte order and drops it.
        return raw.decode("utf-16", errors="replace"), None
    if raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM):]
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp1252"), LEGACY_ENCODING_WARNING
    except UnicodeDecodeError:
        # cp1252 leaves five bytes undefined; latin-1 maps every byte, so it cannot fail.
        return raw.decode("latin-1"), LEGACY_ENCODING_WARNING


def split_tags(caption: str) -> list[str]:
    """The comma-separated tags of a caption, stripped, without empty ones."""
    return [tag for tag in (part.strip() for part in caption.split(",")) if tag]


def tag_frequency(captions: Iterable[str]) -> dict[str, int]:
    """How many captions use each tag, as sd-scripts stores it in ss_tag_frequency.

    Each caption is one image, counted once however many repeats it has. Tags are
    lower-cased because sd-scripts lower-cases them, so "Cat" and "cat" count together.
    A tag repeated within one caption counts each time, again as sd-scripts does.
    """
    counts: dict[str, int] = {}
    for caption in captions:
        for tag in split_tags(caption):
            key = tag.lower()
            counts[key] = counts.get(key, 0) + 1
    return counts
