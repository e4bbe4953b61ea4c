"""Vectors to JSON text without a per-element Python loop.

Each float is written as fixed-point text with 8 decimals, ``" 0.01234567"`` or ``"-0.01234567"``
(the blank stands where a minus sign would: JSON allows whitespace before a value), assembled
from lookup tables of 4-byte words. Exact to 5e-9, and about twice as fast as a general float
formatter on the emulator's hot path. Values of unit-norm vectors lie in (-1, 1).
"""

from __future__ import annotations

import numpy as np
import orjson


def _words(strings: list[str]) -> np.ndarray:
    return np.frombuffer("".join(strings).encode(), dtype=np.uint32)


_HEAD = _words([f"{sign}0.{digit}" for sign in " -" for digit in range(10)])
_MIDDLE = _words([f"{i:04d}" for i in range(10_000)])
_TAIL = _words([f"{i:03d}," for i in range(1_000)])
_OPEN = _words(["   ["])[0]


def json_rows(vectors: np.ndarray) -> list[orjson.Fragment]:
    """One JSON array per row of a 2-D float array, ready to embed in an orjson document."""
    rows, width = vectors.shape
    if width == 0:
        return [orjson.Fragment(b"[]") for _ in range(rows)]
    scaled = np.rint(np.abs(vectors) * 1e8).astype(np.int32)
    np.minimum(scaled, 99_999_999, out=scaled)
    first = scaled // 10_000_000
    scaled -= first * 10_000_000
    middle = scaled // 1_000
    scaled -= middle * 1_000
    first += 10 * (vectors < 0)
    # One word of "   [" before the numbers; the last number's comma becomes "]".
    text = np.empty((rows, 1 + 3 * width), dtype=np.uint32)
    text[:, 0] = _OPEN
    numbers = text[:, 1:].reshape(rows, width, 3)
    numbers[:, :, 0] = _HEAD[first]
    numbers[:, :, 1] = _MIDDLE[middle]
    numbers[:, :, 2] = _TAIL[scaled]
    flat = text.view(np.uint8)
    flat[:, -1] = ord("]")
    return [orjson.Fragment(row.tobytes()) for row in flat]
