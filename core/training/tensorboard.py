"""A minimal TensorBoard event-file writer for scalars, so logging needs no extra package.

The format is TFRecord framing (length, masked CRC-32C, data, masked CRC-32C) around
``Event`` protocol buffers holding ``Summary.Value{tag, simple_value}``; we encode those
few fields by hand. Tag names are Kohya's (loss/current, lr/unet, lr/d*lr/unet, ...), so
TensorBoard dashboards users already have keep working.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

# Parameter groups whose Kohya log tag differs from our component name.
_KOHYA_GROUP_TAGS = {"text_encoder": "textencoder", "text_encoder_2": "textencoder2"}


def lr_tag(group: str, prefix: str = "lr/") -> str:
    """The TensorBoard tag of a group's learning rate: lr/unet, lr/textencoder (as sd-scripts)."""
    return prefix + _KOHYA_GROUP_TAGS.get(group, group)


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> bytes:
    crc = crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # int64 is encoded as its two's complement
    while True:
        bits = value & 0x7F
        value >>= 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, body: bytes) -> bytes:
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step) + body


def scalar_event(tag: str, value: float, step: int, wall_time: float) -> bytes:
    value_msg = _field_bytes(1, tag.encode("utf-8")) + b"\x15" + struct.pack("<f", value)
    summary = _field_bytes(1, value_msg)
    return _event(wall_time, step, _field_bytes(5, summary))


def record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + _masked(header) + data + _masked(data)


class EventWriter:
    """Writes scalar events to ``folder/events.out.tfevents.<time>.<host>``, flushing each."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = folder / name
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for the run
        version = _event(time.time(), 0, _field_bytes(3, b"brain.Event:2"))
        self._file.write(record(version))
        self._file.flush()

    def scalars(self, values: dict[str, float], step: int, wall_time: float | None = None) -> None:
        now = time.time() if wall_time is None else wall_time
        for tag, value in values.items():
            self._file.write(record(scalar_event(tag, float(value), step, now)))
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
