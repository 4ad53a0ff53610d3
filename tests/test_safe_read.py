"""A file named by a config is read only if it is a regular file of text, and only so much.

The tests that open a FIFO or a device run under an alarm: a regression that waits on the
FIFO or reads /dev/zero for ever fails here instead of hanging the suite.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from core.system import safe_read
from core.system.safe_read import FileRefused, MiB, read_regular_bytes, read_text_file

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
needs_alarm = pytest.mark.skipif(not hasattr(signal, "SIGALRM"), reason="no SIGALRM on this system")


class _Hung(Exception):
    pass


@pytest.fixture
def bounded() -> Iterator[None]:
    """Abort a read that blocks: 30 s is a bound on a hang, far above the milliseconds it takes."""

    def hung(*_: object) -> None:
        raise _Hung("the read blocked (waiting on a FIFO or reading a device without end)")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_regular_text_file_is_read_without_its_bom(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbfa cat\tsitting\r\nan owl\x0c\n")
    assert read_text_file(tmp_path / "a.txt", limit=MiB) == "a cat\tsitting\r\nan owl\x0c\n"


@needs_alarm
@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero on this system")
def test_dev_zero_is_refused_as_a_device(bounded):
    with pytest.raises(FileRefused, match=r"^sample_prompts: /dev/zero: is a device, not a file") as info:
        read_regular_bytes("/dev/zero", limit=MiB, what="sample_prompts")
    assert not info.value.missing


@needs_alarm
@needs_fifo
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path, bounded):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(FileRefused, match="is a named pipe"):
        read_text_file(tmp_path / "pipe", limit=MiB, what="sample_prompts")


@needs_alarm
@needs_fifo
def test_a_fifo_swapped_in_after_the_check_is_refused_without_waiting(tmp_path, bounded, monkeypatch):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "regular").write_text("a cat", "utf-8")
    regular, real_stat = os.stat(tmp_path / "regular"), os.stat

    def stat(path, *args, **kwargs):  # the check before opening sees a regular file
        return regular if str(path) == str(tmp_path / "pipe") else real_stat(path, *args, **kwargs)

    monkeypatch.setattr(safe_read.os, "stat", stat)
    with pytest.raises(FileRefused, match="is a named pipe"):
        read_regular_bytes(tmp_path / "pipe", limit=MiB)


def test_a_folder_is_refused(tmp_path):
    with pytest.raises(FileRefused, match="is a folder, not a file; name the file inside it"):
        read_regular_bytes(tmp_path, limit=MiB)


def test_a_missing_file_is_refused_as_missing(tmp_path):
    with pytest.raises(FileRefused, match="not found") as info:
        read_regular_bytes(tmp_path / "nothing.txt", limit=MiB)
    assert info.value.missing and info.value.path == str(tmp_path / "nothing.txt")


def test_a_nul_in_the_name_is_refused_as_missing(tmp_path):
    with pytest.raises(FileRefused) as info:
        read_regular_bytes(f"{tmp_path}/a\x00b.txt", limit=MiB)
    assert info.value.missing


def test_a_file_over_the_limit_is_refused_and_one_at_the_limit_is_read(tmp_path):
    (tmp_path / "big.txt").write_bytes(b"x" * (MiB + 1))
    (tmp_path / "fits.txt").write_bytes(b"x" * MiB)
    with pytest.raises(FileRefused, match=r"is 1,048,577 bytes, more than the 1 MiB allowed here; is it the right"):
        read_regular_bytes(tmp_path / "big.txt", limit=MiB)
    assert len(read_regular_bytes(tmp_path / "fits.txt", limit=MiB)) == MiB


@pytest.mark.parametrize("content, expected", [
    (b"abc\x00def", "holds NUL bytes, so it is a binary file"),
    (b"caf\xe9", r"is not UTF-8 text \(byte 0xe9 at offset 3\); save it as UTF-8"),
    ("utf-16 text".encode("utf-16"), "is UTF-16 text; save it as UTF-8"),
    (b"line one\nline\x07two", r"control character \(U\+0007\) on line 2"),
])
def test_content_that_is_not_utf8_text_is_refused_naming_the_file(tmp_path, content, expected):
    (tmp_path / "f.txt").write_bytes(content)
    with pytest.raises(FileRefused, match=expected) as info:
        read_text_file(tmp_path / "f.txt", limit=MiB, what="sample_prompts")
    assert str(info.value).startswith(f"sample_prompts: {tmp_path / 'f.txt'}: ")


def test_a_refusal_is_an_os_error_so_existing_handlers_catch_it(tmp_path):
    assert issubclass(FileRefused, OSError)
    with pytest.raises(OSError):
        read_regular_bytes(tmp_path, limit=MiB)


@pytest.mark.parametrize("size, shown", [(412, "412 bytes"), (3584, "3.5 KiB"), (256 * 1024, "256 KiB"),
                                         (2 * MiB, "2 MiB")])
def test_sizes_read_as_a_person_reads_them(size, shown):
    assert safe_read.size_text(size) == shown


def test_no_file_descriptor_is_left_open_by_a_refusal(tmp_path):
    (tmp_path / "big.txt").write_bytes(b"x" * 10)
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for _ in range(50):
        with pytest.raises(FileRefused):
            read_regular_bytes(tmp_path / "big.txt", limit=5)
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) <= before
