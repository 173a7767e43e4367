"""Independent NumPy reference of dsquant's numerics contract (docs/numerics.md, DESIGN.md §2).

Written from the contract, not from the implementation: float32 arithmetic is emulated one
operation at a time with NumPy float32 scalars/arrays (each op rounds to nearest even), the double
parts in float64, fused multiply-adds exactly (error-free transformations, or Fractions for
float64), and Philox4x32-10 from its published definition (checked against Random123's
known-answer vectors in test_reference.py).
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from _optional import require

ml_dtypes = require("ml_dtypes")

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {"float16": np.dtype(np.float16), "bfloat16": BF16,
          "float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


# --------------------------------------------------------------------------- Philox4x32-10
def philox4x32_10(ctr, key):
    """ctr: four uint32 arrays, key: two uint32 scalars/arrays -> four uint32 arrays."""
    M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
    W0, W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
    mask = np.uint64(0xFFFFFFFF)
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in ctr)
    k0, k1 = (np.asarray(k, dtype=np.uint64) for k in key)
    for _ in range(10):
        p0 = M0 * c0           # < 2^64: exact in uint64
        p1 = M1 * c2
        hi0, lo0 = p0 >> np.uint64(32), p0 & mask
        hi1, lo1 = p1 >> np.uint64(32), p1 & mask
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + W0) & mask, (k1 + W1) & mask
    return tuple(c.astype(np.uint32) for c in (c0, c1, c2, c3))


def uniforms(seed: int, offset: int, n: int) -> np.ndarray:
    """u for elements 0..n-1 of a call: stream position p = offset + i, word p % 4 of block p // 4,
    top 24 bits scaled by 2^-24 (float32)."""
    p = (np.uint64(offset) + np.arange(n, dtype=np.uint64))
    block = p >> np.uint64(2)
    lane = (p & np.uint64(3)).astype(np.intp)
    ctr = (block & np.uint64(0xFFFFFFFF), block >> np.uint64(32), np.zeros_like(block), np.zeros_like(block))
    words = np.stack(philox4x32_10(ctr, (np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32))))
    w = words[lane, np.arange(n)]
    return (w >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -24)


# --------------------------------------------------------------------------- exact helpers
def fma32(a, b, c):
    """Correctly rounded float32 a*b + c for float32 arrays where a is an integer code below 2^17
    (so a*b is exact in float64); the sum is made exact with TwoSum and rounded once."""
    a, b, c = (np.asarray(v, dtype=np.float64) for v in (a, b, c))
    p = a * b
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)          # s + err == p + c exactly (TwoSum)
    r = s.astype(np.float32)
    # Rounding s rather than the exact sum can only go wrong when s lies exactly halfway between
    # two neighbouring floats: then the sign of err says which side the exact sum is on.
    below = np.where(r.astype(np.float64) <= s, r, np.nextafter(r, np.float32(-np.inf)))
    above = np.nextafter(below, np.float32(np.inf))
    halfway = s == (below.astype(np.float64) + above.astype(np.float64)) / 2
    r = np.where(halfway & (err > 0), above, np.where(halfway & (err < 0), below, r))
    return r.astype(np.float32)


def fma64(a, b, c):
    """Correctly rounded float64 a*b + c (exact rational arithmetic)."""
    a, b, c = (np.asarray(v, dtype=np.float64) for v in (a, b, c))
    out = np.empty(np.broadcast(a, b, c).shape, dtype=np.float64)
    for idx, (x, y, z) in enumerate(zip(*(np.broadcast_to(v, out.shape).ravel() for v in (a, b, c)))):
        out.flat[idx] = float(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)))
    return out


def rne(v):
    return np.rint(v)      # NumPy rint: round half to even


def rhaz_nonneg(v):
    """Round half away from zero for v >= 0, done in float64 where v + 0.5 is exact."""
    return np.floor(np.asarray(v, dtype=np.float64) + 0.5).astype(v.dtype)


# --------------------------------------------------------------------------- fake quantization
def fake_quantize(x: np.ndarray, groups: int, bits: int, symmetric: bool = True,
                  stochastic: bool = False, seed: int = 0, offset: int = 0, saturate: bool = True) -> np.ndarray:
    """The contract's fake quantization of `x` (any supported dtype), returned in x's dtype.

    ``saturate=False`` evaluates the formula without its saturation at the dtype's largest finite
    value (the contract before issue 13), for the test that saturation changes only overflows."""
    with np.errstate(over="ignore", invalid="ignore"):   # overflowing lanes are selected away
        return _fake_quantize(x, groups, bits, symmetric, stochastic, seed, offset, saturate)


def _fake_quantize(x, groups, bits, symmetric, stochastic, seed, offset, saturate=True):
    x = np.ascontiguousarray(x)
    dtype = x.dtype
    ct = np.float64 if dtype == np.float64 else np.float32
    flat = x.reshape(-1)
    n = flat.size
    if n == 0:
        return x.copy()
    S = n // groups
    xf = flat.astype(ct).reshape(groups, S)
    finite = np.isfinite(xf)
    xz = np.where(finite, xf, ct(0))
    u = uniforms(seed, offset, n).reshape(groups, S) if stochastic else None

    if symmetric:
        absmax = np.max(np.abs(xz), axis=1, keepdims=True).astype(np.float64)
        if ct is np.float32:
            s = (np.float64(2.0 ** bits) / (2.0 * absmax + 1e-5)).astype(ct)
        else:   # the same quotient with both operands halved: 2*absmax would overflow at max
            s = (np.float64(2.0 ** (bits - 1)) / (absmax + 5e-6)).astype(ct)
        r = (ct(1) / s).astype(ct)
        lo, hi = ct(-(2 ** (bits - 1))), ct(2 ** (bits - 1) - 1)
        v = (xz * s).astype(ct)
        if stochastic:
            t = np.floor(v)
            q = np.clip(t + (u.astype(ct) < (v - t)).astype(ct), lo, hi)
        else:
            q = np.clip(rne(v), lo, hi)
        q = q + ct(0)          # codes are integers: no negative zero
        y = (q * r).astype(ct)
    else:
        big = np.finfo(ct).max
        has = finite.any(axis=1, keepdims=True)
        mx = np.where(has, np.max(np.where(finite, xf, -big), axis=1, keepdims=True), 0).astype(ct)
        mn = np.where(has, np.min(np.where(finite, xf, big), axis=1, keepdims=True), 0).astype(ct)
        mx64, mn64 = mx.astype(np.float64), mn.astype(np.float64)
        if ct is np.float32:
            s = ((mx64 - mn64 + 1e-5) / 2.0 ** bits).astype(ct)
        else:   # halved operands: mx - mn overflows for groups spanning more than the float64 range
            s = ((mx64 * 0.5 - mn64 * 0.5 + 5e-6) / 2.0 ** (bits - 1)).astype(ct)
        r = (ct(1) / s).astype(ct)
        lo, hi = ct(0), ct(2 ** bits - 1)
        # a span beyond the largest finite value (groups near +-max) is scaled with halved operands
        halve = (mx - mn) > np.finfo(ct).max
        v_plain = ((xz - mn).astype(ct) * r).astype(ct)
        v_half = ((xz * ct(0.5) - mn * ct(0.5)).astype(ct) * (r * ct(2))).astype(ct)
        v = np.where(halve, v_half, v_plain)
        if stochastic:
            t = np.floor(v)
            q = np.clip(t + (u.astype(ct) < (v - t)).astype(ct), lo, hi)
        else:
            q = np.clip(rhaz_nonneg(v), lo, hi)
        qb, sb, mb = np.broadcast_arrays(q, s, mn)
        y = (fma32 if ct is np.float32 else fma64)(qb, sb, mb).astype(ct)

    if saturate:   # the dequantized value saturates at the dtype's largest finite value
        top = ct(ml_dtypes.finfo(dtype).max)
        y = np.clip(y, -top, top)
    out = y.reshape(-1).astype(dtype)
    out = np.where(finite.reshape(-1), out, flat)   # non-finite elements unchanged (same bits)
    return out.reshape(x.shape)


# --------------------------------------------------------------------------- the STE's mask
def ste_mask(x: np.ndarray, groups: int, bits: int, symmetric: bool) -> np.ndarray:
    """mask_clipped's definition (dsquant/ops/ste.py: the torch and JAX gradients), from the
    contract's formulas (docs/numerics.md): 1 where the scaled value v is within half a step of the
    code range or x is not finite."""
    ct = np.float64 if x.dtype == np.float64 else np.float32
    xf = x.reshape(groups, -1).astype(ct)
    finite = np.isfinite(xf)
    with np.errstate(invalid="ignore", over="ignore"):
        if symmetric:
            absmax = np.abs(np.where(finite, xf, 0)).max(axis=1, keepdims=True).astype(np.float64)
            s = (2.0 ** bits / (2.0 * absmax + 1e-5)).astype(ct)
            v, lo, hi = (xf * s).astype(ct), -2 ** (bits - 1), 2 ** (bits - 1) - 1
        else:
            has = finite.any(axis=1, keepdims=True)
            mx = np.where(has, np.where(finite, xf, -np.inf).max(axis=1, keepdims=True), 0).astype(np.float64)
            mn = np.where(has, np.where(finite, xf, np.inf).min(axis=1, keepdims=True), 0).astype(np.float64)
            step = ((mx - mn + 1e-5) / 2.0 ** bits).astype(ct)
            r = (ct(1) / step).astype(ct)
            v, lo, hi = ((xf - mn.astype(ct)).astype(ct) * r).astype(ct), 0, 2 ** bits - 1
        keep = ((v >= lo - 0.5) & (v <= hi + 0.5)) | ~finite
    return keep.reshape(x.shape)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def first_difference(a: np.ndarray, b: np.ndarray) -> str:
    ua = np.ascontiguousarray(a).reshape(-1).view(f"u{a.dtype.itemsize}")
    ub = np.ascontiguousarray(b).reshape(-1).view(f"u{b.dtype.itemsize}")
    bad = np.flatnonzero(ua != ub)
    if bad.size == 0:
        return "identical"
    i = bad[0]
    return (f"{bad.size} of {ua.size} elements differ; first at flat index {i}: "
            f"got {a.reshape(-1)[i]!r} ({ua[i]:#x}) expected {b.reshape(-1)[i]!r} ({ub[i]:#x})")
