"""Independent NumPy reference of DeepSpeed's FP quantizer records in DeepSpeed's code space
(reference semantics §7.2-§7.4, with dsquant's documented fixes, docs/deepspeed_fp.md). Written
from the spec, bit by bit, never calling dsquant: the code space is built as a table of every
magnitude, encoding picks the nearest table entry (ties to the even code), records are Python
integers turned into bytes."""
from __future__ import annotations

import functools

import ml_dtypes
import numpy as np

# (q_bits, M) -> (E, q_range), from the spec's table (§7.2)
FORMATS = {(8, 3): (4, 480.0), (8, 2): (5, 114688.0), (12, 7): (4, 510.0), (6, 2): (3, 28.0), (4, 1): (2, 6.0)}


@functools.cache
def magnitudes(q_bits: int, m: int) -> np.ndarray:
    """Every code magnitude in code order: index e·2^M + mant is 2^(e - bias)·(1 + mant/2^M)."""
    e_bits = q_bits - 1 - m
    bias = 2 ** (e_bits - 1) - 1
    return np.array([2.0 ** (e - bias) * (1 + mant / 2 ** m) for e in range(2 ** e_bits) for mant in range(2 ** m)])


def value(code: int, q_bits: int, m: int) -> float:
    """The value DeepSpeed's decoder means by `code` (every exponent code a normal binade)."""
    sign = -1.0 if code >> (q_bits - 1) & 1 else 1.0
    return sign * magnitudes(q_bits, m)[code & ((1 << (q_bits - 1)) - 1)]


def encode_nearest(v: np.ndarray, q_bits: int, m: int) -> np.ndarray:
    """Codes of scaled values v (float64 array holding exact float32/float64 values): nearest
    magnitude, ties to the even code; |v| below the smallest magnitude -> the smallest with v's
    sign (zero by its sign bit); at or above q_range -> the largest; NaN -> code 0."""
    mags = magnitudes(q_bits, m)
    v = np.asarray(v, dtype=np.float64)
    a = np.abs(v)
    hi = np.clip(np.searchsorted(mags, a, side="left"), 1, len(mags) - 1)   # mags[hi-1] < a <= mags[hi]
    lo = hi - 1
    d_lo, d_hi = a - mags[lo], mags[hi] - a                                 # exact (Sterbenz)
    idx = np.where(d_lo < d_hi, lo, np.where(d_hi < d_lo, hi, np.where(lo % 2 == 0, lo, hi)))
    idx = np.where(a <= mags[0], 0, idx)
    idx = np.where(a >= mags[-1], len(mags) - 1, idx)
    sign = np.signbit(v).astype(np.int64)
    codes = (sign << (q_bits - 1)) | idx
    return np.where(np.isnan(v), 0, codes).astype(np.int64)


def neighbours(v: np.ndarray, q_bits: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The two codes stochastic rounding may choose for each v: the ones just below and just above
    (equal when v is a code value or saturates); below the smallest magnitude: -min and +min."""
    mags = magnitudes(q_bits, m)
    top = 1 << (q_bits - 1)
    v = np.asarray(v, dtype=np.float64)
    a = np.abs(v)
    sign = np.signbit(v).astype(np.int64) << (q_bits - 1)
    exact = np.searchsorted(mags, a, side="left")
    is_code = (exact < len(mags)) & (mags[np.minimum(exact, len(mags) - 1)] == a)
    below = np.clip(np.searchsorted(mags, a, side="right") - 1, 0, len(mags) - 1)
    above = np.where(is_code, below, np.minimum(below + 1, len(mags) - 1))
    first = np.where(a < mags[0], top, sign | below)             # -min
    second = np.where(a < mags[0], 0, sign | above)              # +min
    sat = a >= mags[-1]
    first = np.where(sat, sign | (len(mags) - 1), first)
    second = np.where(sat, sign | (len(mags) - 1), second)
    return first, second


def compute_dtype(dtype) -> type:
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def scaled(x: np.ndarray, group_size: int, q_bits: int, m: int):
    """(scaled values v per element as float64, float32 scale per group) by the rules of the docs:
    absmax over finite elements; inv = C(q_range / absmax) (1 for absmax 0), or, where that
    overflows C, x and absmax both taken times 2^64 first; scale = f32(absmax / q_range) (0 for
    absmax 0, saturated at float32's maximum); v = C(x · inv), C = float32 (float64 for float64)."""
    c = compute_dtype(x.dtype)
    q_range = FORMATS[(q_bits, m)][1]
    xs = x.astype(c).reshape(-1, group_size)
    finite = np.where(np.isfinite(xs), np.abs(xs), c(0))
    absmax = finite.max(axis=1)
    safe = np.where(absmax == 0, c(1), absmax)
    with np.errstate(divide="ignore", over="ignore"):
        inv = (c(q_range) / safe).astype(c)
        tiny = np.isinf(inv)
        pre = np.where(tiny, c(2.0 ** 64), c(1)).astype(c)
        inv = np.where(absmax == 0, c(1), c(q_range) / (safe * pre)).astype(c)
    # float64 groups beyond float32's range: the stored scale saturates at float32's largest value
    scale = np.minimum(absmax.astype(np.float64) / q_range, float(np.finfo(np.float32).max)).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        v = ((xs * pre[:, None]).astype(c) * inv[:, None]).astype(c)
    return v.astype(np.float64).reshape(-1), scale


def pack_records(codes: np.ndarray, scales: np.ndarray, group_size: int, q_bits: int) -> np.ndarray:
    """uint8 [groups, group_size·q_bits/8 + 4]: LSB-first bit stream of the codes, then the scale LE."""
    codes = np.asarray(codes).reshape(-1, group_size)
    nbytes = group_size * q_bits // 8
    out = np.zeros((codes.shape[0], nbytes + 4), np.uint8)
    for g, row in enumerate(codes):
        acc = 0
        for k, c in enumerate(row.tolist()):
            acc |= int(c) << (k * q_bits)
        out[g, :nbytes] = np.frombuffer(acc.to_bytes(nbytes, "little"), np.uint8)
        out[g, nbytes:] = np.frombuffer(np.array([scales[g]], "<f4").tobytes(), np.uint8)
    return out


def unpack_records(records: np.ndarray, group_size: int, q_bits: int) -> tuple[np.ndarray, np.ndarray]:
    nbytes = group_size * q_bits // 8
    records = np.asarray(records, np.uint8).reshape(-1, nbytes + 4)
    codes = []
    for row in records:
        acc = int.from_bytes(row[:nbytes].tobytes(), "little")
        codes.extend((acc >> (k * q_bits)) & ((1 << q_bits) - 1) for k in range(group_size))
    scales = np.frombuffer(records[:, nbytes:].tobytes(), "<f4")
    return np.array(codes, np.int64), scales


def decode(codes: np.ndarray, scales: np.ndarray, group_size: int, q_bits: int, m: int, dtype) -> np.ndarray:
    """out(f32(value · scale)) (float64 output: the exact product); NaN products stay NaN."""
    codes = np.asarray(codes, np.int64)
    mags = magnitudes(q_bits, m)
    sign = np.where((codes >> (q_bits - 1)) & 1, -1.0, 1.0)
    vals = (sign * mags[codes & ((1 << (q_bits - 1)) - 1)]).reshape(-1, group_size)   # as value()
    s = np.asarray(scales, np.float32)[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        if np.dtype(dtype) == np.float64:
            y = vals * s.astype(np.float64)
        else:
            y = vals.astype(np.float32) * s
        y = y.reshape(-1)
        if np.dtype(dtype) == ml_dtypes.bfloat16:
            return y.astype(ml_dtypes.bfloat16)
        return y.astype(dtype)


def quantize_records(x: np.ndarray, group_size: int, q_bits: int, m: int) -> np.ndarray:
    v, scale = scaled(x, group_size, q_bits, m)
    return pack_records(encode_nearest(v, q_bits, m), scale, group_size, q_bits)


# ---------------------------------------------------------------------------------------------
# The default mode: OCP element codes (ml_dtypes' conversions of the scaled values) with absmax
# scaling, saturating, in the same record layout.
# ---------------------------------------------------------------------------------------------
OCP = {(8, 3): (ml_dtypes.float8_e4m3fn, 448.0, 0x7F), (8, 2): (ml_dtypes.float8_e5m2, 57344.0, 0x7E),
       (6, 2): (ml_dtypes.float6_e3m2fn, 28.0, None), (4, 1): (ml_dtypes.float4_e2m1fn, 6.0, None)}


def ocp_scaled(x: np.ndarray, group_size: int, fmt_max: float):
    """(v as float64, float32 scale): inv = C(max / absmax) (1 for absmax 0, saturated at C's
    largest value), scale = f32(absmax / max), v = C(x · inv)."""
    c = compute_dtype(x.dtype)
    xs = x.astype(c).reshape(-1, group_size)
    absmax = np.where(np.isfinite(xs), np.abs(xs), c(0)).max(axis=1)
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.where(absmax == 0, c(1), np.minimum(c(fmt_max) / np.where(absmax == 0, c(1), absmax),
                                                     np.finfo(c).max)).astype(c)
    scale = np.minimum(absmax.astype(np.float64) / fmt_max, float(np.finfo(np.float32).max)).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        v = (xs * inv[:, None]).astype(c)
    return v.astype(np.float64).reshape(-1), scale


def ocp_encode(v: np.ndarray, q_bits: int, m: int) -> np.ndarray:
    """ml_dtypes' code of v clipped to ±max (saturation); NaN: the format's NaN with v's sign
    (E4M3, E5M2) or +0 (FP6/FP4, which have none)."""
    t, fmt_max, nan_code = OCP[(q_bits, m)]
    with np.errstate(invalid="ignore"):
        clipped = np.clip(v, -fmt_max, fmt_max)
    codes = np.where(np.isnan(v), 0.0, clipped).astype(np.float32).astype(t).view(np.uint8).astype(np.int64)
    nan = np.isnan(v)
    if nan_code is None:
        return np.where(nan, 0, codes)
    return np.where(nan, (np.signbit(v).astype(np.int64) << (q_bits - 1)) | nan_code, codes)


def ocp_quantize_records(x: np.ndarray, group_size: int, q_bits: int, m: int) -> np.ndarray:
    v, scale = ocp_scaled(x, group_size, OCP[(q_bits, m)][1])
    return pack_records(ocp_encode(v, q_bits, m), scale, group_size, q_bits)


def ocp_decode(codes: np.ndarray, scales: np.ndarray, group_size: int, q_bits: int, m: int, dtype) -> np.ndarray:
    t = OCP[(q_bits, m)][0]
    vals = np.asarray(codes, np.uint8).view(t).astype(np.float32).reshape(-1, group_size)
    s = np.asarray(scales, np.float32)[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        y = vals.astype(np.float64) * s.astype(np.float64) if np.dtype(dtype) == np.float64 else vals * s
        return y.reshape(-1).astype(dtype)
