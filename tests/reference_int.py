"""Independent NumPy reference of dsquant's integer quantization format (DESIGN.md §2, docs/format.md).

Written from the contract, not from the implementation: float32 arithmetic is NumPy float32 array
arithmetic (each operation rounds to nearest even), the double parts are float64, the fused
multiply-add is made exact by round-to-odd in float64, code packing uses shifts on int64 arrays,
and the experimental float16 dequantization uses NumPy's float16 arithmetic.
"""
from __future__ import annotations

import numpy as np

from _optional import require

ml_dtypes = require("ml_dtypes")

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {"float16": np.dtype(np.float16), "bfloat16": BF16,
          "float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


def compute_dtype(dtype) -> np.dtype:
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def codes_per_byte(bits: int) -> int:
    return 8 // bits if 8 % bits == 0 else 1


def fma32(a, b, c):
    """Correctly rounded float32 a*b + c, for a*b exact in float64 (a an integer code, b float32).

    The float64 sum is turned into its round-to-odd value (step one ulp towards the exact sum when
    the sum was inexact and its last bit is even); rounding that to float32 is then exact, since
    53 >= 24 + 2 bits."""
    a, b, c = (np.asarray(v, dtype=np.float64) for v in (a, b, c))
    with np.errstate(invalid="ignore", over="ignore"):   # infinite params: s is already the answer
        p = a * b
        s = p + c
        bb = s - p
        err = (p - (s - bb)) + (c - bb)                 # s + err == p + c exactly (TwoSum)
        even = (s.view(np.int64) & 1) == 0
        toward = np.where(err > 0, np.inf, -np.inf)
        s = np.where(np.isfinite(s) & (err != 0) & even, np.nextafter(s, toward), s)
        return s.astype(np.float32)


def group_stats(xc: np.ndarray):
    """absmax, max, min of each row over finite elements (+0 for a row without any)."""
    fin = np.isfinite(xc)
    has = fin.any(axis=1)
    absmax = np.where(fin, np.abs(np.where(fin, xc, 0)), 0).max(axis=1, initial=0)
    mx = np.where(has, np.where(fin, xc, -np.inf).max(axis=1, initial=-np.inf), 0)
    mn = np.where(has, np.where(fin, xc, np.inf).min(axis=1, initial=np.inf), 0)
    # the contract orders -0 below +0 (NumPy's max/min may return either zero)
    zero, neg = xc == 0, np.signbit(xc)
    mx = np.where((mx == 0) & (zero & ~neg).any(axis=1), 0.0, mx)
    mn = np.where((mn == 0) & (zero & neg).any(axis=1), -0.0, mn)
    return absmax.astype(xc.dtype), mx.astype(xc.dtype), mn.astype(xc.dtype)


def _round_scale(quotient: np.ndarray, c: np.dtype) -> np.ndarray:
    """A float64 quotient rounded once to the compute type, saturating at its largest value."""
    big = np.finfo(c).max
    return np.where(quotient < big, quotient, big).astype(c)


def _float32_saturated(v: np.ndarray) -> np.ndarray:
    top = np.float64(np.finfo(np.float32).max)
    return np.clip(v.astype(np.float64), -top, top).astype(np.float32)


def params_ref(x: np.ndarray, groups: int, bits: int, symmetric: bool):
    """(scale, offset) in the compute type and the stored float32 params [groups, 1|2]."""
    c = compute_dtype(x.dtype)
    xc = np.asarray(x).astype(c).reshape(groups, -1)
    absmax, mx, mn = group_stats(xc)
    levels = 2.0 ** bits
    with np.errstate(divide="ignore", over="ignore"):
        if symmetric:
            # 2^b / (2·absmax) == 2^(b-1) / absmax: the same real quotient, without the overflow of
            # 2·absmax at float64's max
            a = absmax.astype(np.float64)
            scale = np.where(a == 0, c.type(1), _round_scale((levels / 2) / a, c))
            offset = np.zeros(groups, dtype=c)
        else:
            mx64, mn64 = mx.astype(np.float64), mn.astype(np.float64)
            # float64 groups spanning more than float64's range: the same quotient and midpoint with
            # halved operands (halving is exact)
            span, half_span = mx64 - mn64, mx64 * 0.5 - mn64 * 0.5
            scale = np.where(span == 0, c.type(1), np.where(np.isfinite(span), _round_scale(levels / span, c),
                                                            _round_scale((levels / 2) / half_span, c)))
            total = mx64 + mn64
            offset = np.where(np.isfinite(total), total / 2, mx64 * 0.5 + mn64 * 0.5).astype(c)
        # float32 params of float64 groups beyond float32's range saturate at its largest value
        p0 = _float32_saturated(c.type(1) / scale)
        params = p0[:, None] if symmetric else np.stack([p0, _float32_saturated(offset)], axis=1)
    return scale.astype(c), offset, params


def codes_ref(x: np.ndarray, groups: int, bits: int, symmetric: bool):
    """Signed codes (int64, flat) and float32 params of `x`."""
    c = compute_dtype(x.dtype)
    scale, offset, params = params_ref(x, groups, bits, symmetric)
    xc = np.asarray(x).astype(c).reshape(groups, -1)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    fin = np.isfinite(xc)
    v = (np.where(fin, xc, offset[:, None]) - offset[:, None]) * scale[:, None]   # two roundings in c
    q = np.rint(np.clip(v, lo, hi)).astype(np.int64)                              # half to even
    q = np.where(fin, q, np.where(np.isnan(xc), 0, np.where(xc > 0, hi, lo)))
    return q.reshape(-1), params


def pack_ref(codes: np.ndarray, bits: int) -> np.ndarray:
    """Code bytes (uint8, flat): packed first-element-high when 8 % bits == 0, else one int8 each."""
    per = codes_per_byte(bits)
    if per == 1:
        return codes.astype(np.int8).view(np.uint8)
    fields = (codes.astype(np.int64) & ((1 << bits) - 1)).reshape(-1, per)
    shifts = 8 - bits * np.arange(1, per + 1)
    return (fields << shifts).sum(axis=1).astype(np.uint8)


def unpack_ref(data: np.ndarray, bits: int, signed: bool = True) -> np.ndarray:
    """Codes (int64, flat) of code bytes."""
    data = np.asarray(data).reshape(-1).view(np.uint8).astype(np.int64)
    per = codes_per_byte(bits)
    width = 8 // per
    shifts = 8 - width * np.arange(1, per + 1)
    fields = ((data[:, None] >> shifts) & ((1 << width) - 1)).reshape(-1)
    if signed:
        fields = np.where(fields >= 2 ** (width - 1), fields - 2 ** width, fields)
    return fields


def quantize_ref(x: np.ndarray, groups: int, bits: int, symmetric: bool):
    """(code bytes uint8 flat, params float32) of dsquant.quantize."""
    codes, params = codes_ref(x, groups, bits, symmetric)
    return pack_ref(codes, bits), params


def dequantize_ref(data: np.ndarray, params: np.ndarray, bits: int, dtype, saturate: bool = True) -> np.ndarray:
    """Flat values of dsquant.dequantize: float32 q·p0 or fma(q, p0, p1), rounded once to dtype
    (``saturate=False``: without the saturation, as quantized_reduction's terms)."""
    codes = unpack_ref(data, bits).astype(np.float32)
    groups = params.shape[0]
    q = codes.reshape(groups, -1)
    if params.shape[1] == 1:
        with np.errstate(invalid="ignore", over="ignore"):
            y = q * params[:, :1]
    else:
        y = fma32(q, params[:, :1], params[:, 1:])
    dtype = DTYPES[dtype] if isinstance(dtype, str) else np.dtype(dtype)
    # with finite params, the value saturates at the output dtype's largest finite value (float32's
    # for float64, whose values are computed in float32)
    top = np.float32(min(float(ml_dtypes.finfo(dtype).max), float(np.finfo(np.float32).max)))
    finite = np.isfinite(params).all(axis=1, keepdims=True) & saturate
    with np.errstate(invalid="ignore"):
        y = np.where(finite, np.clip(y, -top, top), y)
    with np.errstate(over="ignore"):
        return y.astype(dtype).reshape(-1)


def uint_half_ref(data, scale, minimum, num_group: int, group_size: int, bits: int) -> np.ndarray:
    """DeepSpeed's experimental dequantization in NumPy float16 arithmetic: f16(q)/scale + min."""
    q = unpack_ref(data, bits, signed=False).astype(np.float16).reshape(num_group, group_size)
    s = np.asarray(scale, dtype=np.float16).reshape(-1, 1)
    m = np.asarray(minimum, dtype=np.float16).reshape(-1, 1)
    # each half operation saturates at +-65504 instead of overflowing (a non-finite minimum, and 0/0,
    # keep IEEE's result); a half operation is the float32 one rounded once to half
    top = np.float32(65504)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t = np.clip(q.astype(np.float32) / s.astype(np.float32), -top, top).astype(np.float16)
        y = t.astype(np.float32) + m.astype(np.float32)
        return np.where(np.isfinite(m), np.clip(y, -top, top), y).astype(np.float16)


def codes_given_ref(x: np.ndarray, params: np.ndarray, bits: int):
    """Signed codes (int64, flat) of `x` (laid out group by group, flat) with the caller's float32
    params [groups, 1|2]: scale = C(1 / C(p0)), offset = C(p1) (0 symmetric), then codes_ref's rule."""
    c = compute_dtype(x.dtype)
    groups, k = params.shape
    with np.errstate(divide="ignore"):
        scale = (c.type(1) / params[:, 0].astype(c)).astype(c)
    offset = params[:, 1].astype(c) if k == 2 else np.zeros(groups, c)
    xc = np.asarray(x).astype(c).reshape(groups, -1)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    fin = np.isfinite(xc)
    with np.errstate(over="ignore", invalid="ignore"):
        v = (np.where(fin, xc, offset[:, None]) - offset[:, None]) * scale[:, None]
    q = np.rint(np.clip(v, lo, hi)).astype(np.int64)
    q = np.where(fin, q, np.where(np.isnan(xc), 0, np.where(xc > 0, hi, lo)))
    return q.reshape(-1)
