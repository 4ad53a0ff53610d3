"""Image files that pass a header check but cannot be decoded."""

import struct
import zlib
from pathlib import Path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def garbage_png(path: Path, size: tuple[int, int]) -> Path:
    """A PNG with a correct signature, IHDR and IEND (so its header and ending read fine)
    whose IDAT holds bytes that are not a zlib stream: damage found only by decoding."""
    width, height = size
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"\x13\x37" * 300)
                     + _chunk(b"IEND", b""))
    return path
