"""The task-run state grid as one small PNG per task group.

Every task run is a square coloured by its state, in submission order, left
to right and top to bottom. One indexed-colour PNG per group keeps 100,000
runs to a few kilobytes and one message, where one HTML element per run
would stall the browser. Pure Python (``zlib`` + ``struct``): no imaging
library is needed.
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import NamedTuple

from nbflow.report.model import CATEGORIES

GAP = len(CATEGORIES)  # palette index of the (transparent) space between squares
_PALETTE = b"".join(bytes.fromhex(c.colour[1:]) for c in CATEGORIES) + b"\xff\xff\xff"
_ALPHA = b"\xff" * len(CATEGORIES) + b"\x00"


class GridImage(NamedTuple):
    """A PNG and its size in pixels."""

    png: bytes
    width: int
    height: int


def layout(n: int, max_width: int = 600, target_height: int = 160) -> tuple[int, int, int]:
    """``(columns, square, gap)`` for ``n`` runs: big squares for few runs, 1 px for very many."""
    if n <= 0:
        return 1, 12, 2
    # the largest pitch that fits n squares in about max_width x target_height
    pitch = int(math.sqrt(max_width * target_height / n)) or 1
    pitch = max(1, min(pitch, 14))
    gap = 0 if pitch < 4 else (1 if pitch < 10 else 2)
    columns = max(1, min(n, max_width // pitch))
    return columns, pitch - gap, gap


def grid_png(codes: bytes | bytearray, max_width: int = 600, target_height: int = 160) -> GridImage:
    """Draw state codes (one byte per run) as a grid of coloured squares."""
    codes = bytes(codes)
    columns, square, gap = layout(len(codes), max_width, target_height)
    rows = max(1, math.ceil(len(codes) / columns))
    pitch = square + gap
    width = columns * pitch - gap
    height = rows * pitch - gap
    cells = [bytes([c]) * square + bytes([GAP]) * gap for c in range(GAP + 1)]
    gap_line = b"\x00" + bytes([GAP]) * width
    # Most rows of a big group are all one state: draw each distinct row once.
    drawn: dict[bytes, bytes] = {}
    lines = []
    for r in range(rows):
        row = codes[r * columns : (r + 1) * columns].ljust(columns, bytes([GAP]))
        line = drawn.get(row)
        if line is None:
            line = b"\x00" + (row if pitch == 1 else b"".join(map(cells.__getitem__, row)))[:width]
            drawn[row] = line
        lines.extend([line] * square)
        if gap and r < rows - 1:
            lines.extend([gap_line] * gap)
    return GridImage(_png(width, height, b"".join(lines)), width, height)


def _png(width: int, height: int, raw: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)  # 8-bit indexed colour
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"PLTE", _PALETTE),
            chunk(b"tRNS", _ALPHA),
            chunk(b"IDAT", zlib.compress(raw, 1)),
            chunk(b"IEND", b""),
        )
    )


__all__ = ["GridImage", "grid_png", "layout"]
