"""Caption files are read as sd-scripts reads them, in more encodings than it accepts."""

from __future__ import annotations

import codecs
import os
import signal
from pathlib import Path

import pytest

from core.data.captions import MAX_CAPTION_BYTES, read_caption_file, split_tags, tag_frequency


def _caption(tmp_path: Path, data: bytes) -> tuple[str, str | None]:
    path = tmp_path / "img.txt"
    path.write_bytes(data)
    return read_caption_file(path)


@pytest.mark.parametrize("data", [b"  cat, sitting  \nsecond line\n", b"cat, sitting\r\nmore",
                                  b"cat, sitting\rmore", b"cat, sitting"])
def test_only_the_first_line_is_used_stripped(tmp_path: Path, data: bytes) -> None:
    assert _caption(tmp_path, data) == ("cat, sitting", None)


def test_utf8_bom_is_dropped(tmp_path: Path) -> None:
    assert _caption(tmp_path, codecs.BOM_UTF8 + "café, ß".encode()) == ("café, ß", None)


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_with_a_bom(tmp_path: Path, codec: str) -> None:
    text = "猫, café\nsecond"
    data = text.encode("utf-16") if codec == "utf-16" else (
        (codecs.BOM_UTF16_LE if codec.endswith("le") else codecs.BOM_UTF16_BE) + text.encode(codec))
    assert _caption(tmp_path, data) == ("猫, café", None)


def test_invalid_utf8_is_read_as_windows_1252_with_a_warning(tmp_path: Path) -> None:
    caption, warning = _caption(tmp_path, "café, “quoted”".encode("cp1252"))
    assert caption == "café, “quoted”"
    assert warning == "read as Windows-1252; save it as UTF-8"


def test_bytes_undefined_in_windows_1252_fall_back_to_latin_1(tmp_path: Path) -> None:
    caption, warning = _caption(tmp_path, b"caf\xe9 \x81")
    assert caption == "café \x81"
    assert warning == "read as Windows-1252; save it as UTF-8"


@pytest.mark.parametrize("data", [b"", codecs.BOM_UTF8])
def test_empty_caption_file(tmp_path: Path, data: bytes) -> None:
    assert _caption(tmp_path, data) == ("", "empty caption file")


def test_blank_first_line_is_an_empty_caption_with_a_warning(tmp_path: Path) -> None:
    caption, warning = _caption(tmp_path, b"\n cat, sitting\n")
    assert caption == ""
    assert warning is not None and "first line" in warning


def test_split_tags_strips_and_drops_empty_tags() -> None:
    assert split_tags(" cat ,sitting,, , red hat ,") == ["cat", "sitting", "red hat"]
    assert split_tags("") == []


def test_tag_frequency_counts_each_caption_once_per_tag_lowercased() -> None:
    counts = tag_frequency(["cat, sitting", "Cat, red hat,", "", "dog, , sitting"])
    assert counts == {"cat": 2, "sitting": 2, "red hat": 1, "dog": 1}


def test_tag_frequency_counts_a_repeated_tag_each_time_as_sd_scripts_does() -> None:
    assert tag_frequency(["cat, cat"]) == {"cat": 2}


# ---------------------------------------------------------------- files that are not captions

def test_a_first_line_longer_than_the_cap_is_cut_there_with_a_warning(tmp_path: Path) -> None:
    # The cut falls inside "é" (two bytes): it is dropped whole, so the text stays UTF-8.
    data = b"x" * (MAX_CAPTION_BYTES - 1) + "é, more".encode() + b" and more" * 1000
    caption, warning = _caption(tmp_path, data)
    assert caption == "x" * (MAX_CAPTION_BYTES - 1)
    assert warning == "its first line is longer than 4 MiB; only that much is read"


def test_a_short_first_line_of_a_huge_file_is_read_without_a_warning(tmp_path: Path) -> None:
    assert _caption(tmp_path, b"cat, sitting\n" + b"x" * (MAX_CAPTION_BYTES + 10)) == ("cat, sitting", None)


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not hasattr(signal, "SIGALRM"), reason="no FIFOs or alarms here")
def test_a_fifo_named_like_a_caption_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "img.txt")

    def hung(*_: object) -> None:
        raise TimeoutError("reading the FIFO blocked")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)  # a bound on a hang, far above the milliseconds a refusal takes
    try:
        with pytest.raises(OSError, match="is a named pipe") as info:
            read_caption_file(tmp_path / "img.txt")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert not isinstance(info.value, TimeoutError)
