"""Packed integer codes taken apart and put back together, in NumPy or CuPy (the module is passed
in): for groupings whose blocks split a byte's codes between groups (bits 2 or 4 with a block
whose last entry is not a multiple of the codes per byte, e.g. per-channel along the last axis),
where moving codes into group order must move single codes, not bytes. Integer operations only,
so the bits are the same on either device."""
from __future__ import annotations

from typing import Any


def unpack(xp: Any, packed: Any, bits: int, out: Any) -> None:
    """Writes the signed codes of the bytes `packed` (1-d, `per` codes each, first in the high
    bits) into the 1-d int8 array `out` of ``per * packed.size`` elements."""
    per = 8 // bits
    u = packed.view(xp.uint8)
    cols = out.reshape(-1, per)
    for i in range(per):
        field = (u >> (8 - bits * (i + 1))) & ((1 << bits) - 1)               # uint8
        negative = (field >> (bits - 1)) * ((1 << bits) & 0xFF)              # 2**bits where the sign bit is set
        cols[:, i] = (field - negative).view(xp.int8)                        # wraps to the two's complement
    return None


def pack(xp: Any, codes: Any, bits: int, out: Any) -> None:
    """Writes the 1-d int8 `codes` (a multiple of `per` of them) into the 1-d uint8/int8 array
    `out`, `per` codes per byte, first in the high bits."""
    per = 8 // bits
    cols = codes.view(xp.uint8).reshape(-1, per)
    mask = (1 << bits) - 1
    byte = (cols[:, 0] & mask) << (8 - bits)
    for i in range(1, per):
        byte = byte | ((cols[:, i] & mask) << (8 - bits * (i + 1)))
    out.view(xp.uint8)[...] = byte
