"""Independent NumPy reference of minifloat quantization (docs/fp.md), written from the specs:

* element codes: ml_dtypes' conversions (float8_e4m3fn, float8_e5m2, float6_e3m2fn, float6_e2m3fn,
  float4_e2m1fn) of scaled values computed here in NumPy (float32 one operation at a time; float64
  for float64 inputs), saturation by clipping to ±max first;
* absmax: inv = f32(max / absmax) (1 for a group without a finite non-zero element), scale f32(absmax / max);
* MX (OCP Microscaling Formats v1.0, §6.3): X = floor(log2(amax)) - emax_elem (FLOOR), or
  ceil(log2(amax / max_elem)) (RCEIL, as torchao's ScaleCalculationMode.RCEIL), from np.frexp,
  clamped to E8M0's [-127, 127]; elements x * 2^-X (np.ldexp);
* NVFP4 (NVIDIA's recipe): global encode scale 448*6 / amax_tensor, E4M3 block scale of
  amax_block / 6 times it, elements multiplied by global / block scale;
* stochastic rounding: the two representable neighbours of |v| found by search in the table of
  every value of the format, up with probability (|v| - lo) / (hi - lo) against the uniforms of
  reference.uniforms (Philox4x32-10 from its definition).
It never calls dsquant.
"""
from __future__ import annotations

import numpy as np

import reference as ref
from _optional import require

ml_dtypes = require("ml_dtypes")

# name -> (ml_dtypes type, bits, mantissa bits, emax)
FORMATS = {
    "e4m3": (ml_dtypes.float8_e4m3fn, 8, 3, 8),
    "e5m2": (ml_dtypes.float8_e5m2, 8, 2, 15),
    "e3m2": (ml_dtypes.float6_e3m2fn, 6, 2, 4),
    "e2m3": (ml_dtypes.float6_e2m3fn, 6, 3, 2),
    "e2m1": (ml_dtypes.float4_e2m1fn, 4, 1, 2),
}
NAMES = tuple(FORMATS)
FLT_MAX = np.float32(np.finfo(np.float32).max)


def mltype(fmt):
    return FORMATS[fmt][0]


def bits(fmt):
    return FORMATS[fmt][1]


def fmt_max(fmt) -> float:
    return float(ml_dtypes.finfo(mltype(fmt)).max)


def compute_dtype(dtype):
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


# --------------------------------------------------------------------------- packing
def pack(codes: np.ndarray, fmt) -> np.ndarray:
    """uint8 bytes of a flat code array: an LSB-first bit stream of `bits` per code."""
    b = bits(fmt)
    c = np.asarray(codes, dtype=np.uint64).ravel()
    per = {8: 1, 6: 4, 4: 2}[b]
    assert c.size % per == 0
    words = np.zeros(c.size // per, dtype=np.uint64)
    for k in range(per):
        words |= c[k::per] << np.uint64(b * k)
    nbytes = per * b // 8
    return np.stack([(words >> np.uint64(8 * j)) & np.uint64(0xFF) for j in range(nbytes)], 1).astype(np.uint8).ravel()


def unpack(data: np.ndarray, fmt) -> np.ndarray:
    b = bits(fmt)
    per = {8: 1, 6: 4, 4: 2}[b]
    nbytes = per * b // 8
    d = np.asarray(data).view(np.uint8).reshape(-1, nbytes).astype(np.uint64)
    words = np.zeros(d.shape[0], dtype=np.uint64)
    for j in range(nbytes):
        words |= d[:, j] << np.uint64(8 * j)
    return np.stack([(words >> np.uint64(b * k)) & np.uint64((1 << b) - 1) for k in range(per)], 1).astype(
        np.uint8).ravel()


# --------------------------------------------------------------------------- element codes
def to_codes(v: np.ndarray, fmt, saturate: bool) -> np.ndarray:
    """Codes (uint8, unpacked) of scaled values v (float32 or float64), nearest even, by ml_dtypes.
    NaN -> ml_dtypes' NaN where the format has one, +0 otherwise (dsquant's policy: ml_dtypes gives
    a zero of the opposite sign there)."""
    v = np.asarray(v)
    m = fmt_max(fmt)
    w = np.clip(v, -m, m) if saturate else v          # clip keeps NaN
    codes = w.astype(mltype(fmt)).view(np.uint8)
    if bits(fmt) < 8:
        codes = np.where(np.isnan(v), np.uint8(0), codes)
    return codes.astype(np.uint8)


def from_codes(codes: np.ndarray, fmt) -> np.ndarray:
    """float32 values of codes (ml_dtypes)."""
    return np.asarray(codes, dtype=np.uint8).view(mltype(fmt)).astype(np.float32)


def _values_table(fmt):
    """Every finite non-negative value of the format, ascending (float64), and the quantum of
    its top binade."""
    b, mbits, emax = bits(fmt), FORMATS[fmt][2], FORMATS[fmt][3]
    vals = from_codes(np.arange(1 << (b - 1), dtype=np.uint8), fmt).astype(np.float64)
    vals = np.unique(vals[np.isfinite(vals)])
    return vals, 2.0 ** (emax - mbits)


def to_codes_stochastic(v: np.ndarray, u: np.ndarray, fmt, saturate: bool) -> np.ndarray:
    """Stochastic rounding of v to the format: up to the next representable magnitude with
    probability equal to the dropped fraction, u (float32 in [0, 1)) against that fraction."""
    v = np.asarray(v)
    a = np.abs(v).astype(np.float64)
    vals, top_q = _values_table(fmt)
    m = vals[-1]
    finite = np.isfinite(a)
    af = np.where(finite, a, 0.0)
    idx = np.clip(np.searchsorted(vals, af, side="right") - 1, 0, vals.size - 1)
    lo = vals[idx]
    hi = np.where(idx + 1 < vals.size, vals[np.minimum(idx + 1, vals.size - 1)], m + top_q)
    frac = (af - lo) / (hi - lo)                      # exact: hi - lo is a power of two
    up = u.astype(np.float64) < frac
    r = np.where(up, hi, lo)
    over = (r > m) | (af >= m + top_q) | ~finite
    r = np.where(over, np.inf, r)
    signed = np.copysign(r, v.astype(np.float64))
    signed = np.where(np.isnan(v), np.nan, signed)
    return to_codes(signed, fmt, saturate)


# --------------------------------------------------------------------------- statistics
def group_absmax(x: np.ndarray, group_size: int) -> np.ndarray:
    """Largest finite magnitude per group, in the compute type (0 for no finite element)."""
    c = compute_dtype(x.dtype)
    g = x.astype(c).reshape(-1, group_size)
    return np.where(np.isfinite(g), np.abs(g), 0).max(axis=1).astype(c)


def _scaled(x, group_size, mul):
    c = compute_dtype(x.dtype)
    g = x.astype(c).reshape(-1, group_size)
    finite = np.isfinite(g)
    return (g * mul.astype(c)[:, None]).astype(c), finite


# --------------------------------------------------------------------------- scalings
def absmax_scale(x, group_size, fmt):
    """(multiplier in the compute type, stored float32 scale, dq) per group."""
    c = compute_dtype(x.dtype)
    am = group_absmax(x, group_size)
    m = c(fmt_max(fmt))
    with np.errstate(divide="ignore", over="ignore"):
        inv = (m / am).astype(c)
    inv = np.where(am == 0, c(1), np.minimum(inv, np.finfo(c).max)).astype(c)
    with np.errstate(over="ignore"):
        scale = np.minimum((am / m).astype(np.float64), float(FLT_MAX)).astype(np.float32)
    return inv, scale, scale


def mx_scale(x, group_size, fmt, rounding):
    """(multiplier, E8M0 code, dq) per group, from the OCP MX definition."""
    c = compute_dtype(x.dtype)
    am = group_absmax(x, group_size).astype(np.float64)
    emax = FORMATS[fmt][3]
    if rounding == "floor":
        _, e = np.frexp(am)                           # am = f * 2^e, f in [0.5, 1)
        X = e - 1 - emax
    else:
        d = (am.astype(c) / c(fmt_max(fmt))).astype(c).astype(np.float64)
        f, e = np.frexp(d)
        X = np.where(f == 0.5, e - 1, e)             # ceil(log2(d))
    X = np.where(am == 0, -127, np.clip(X, -127, 127)).astype(np.int64)
    mul = np.ldexp(np.ones(X.shape, dtype=c), -X).astype(c)
    dq = np.ldexp(np.ones(X.shape, dtype=np.float32), X).astype(np.float32)
    return mul, (X + 127).astype(np.uint8), dq


def nvfp4_scale(x, group_size):
    """(multiplier, E4M3 block scale code, dq, tensor scale) per group, NVIDIA's NVFP4."""
    f32 = np.float32
    c = compute_dtype(x.dtype)
    finite = np.isfinite(x.astype(c))
    amax_t = np.abs(x.astype(c))[finite].max() if finite.any() else c(0)
    amax_t = f32(min(float(amax_t), float(FLT_MAX)))
    s_enc = f32(1) if amax_t == 0 else min(f32(f32(2688) / amax_t), FLT_MAX)
    tensor = f32(f32(1) / s_enc)
    bam = np.minimum(group_absmax(x, group_size).astype(np.float64), float(FLT_MAX)).astype(f32)
    bs = ((bam / f32(6)).astype(f32) * s_enc).astype(f32)
    code = to_codes(bs, "e4m3", True)
    block = from_codes(code, "e4m3")
    with np.errstate(divide="ignore"):
        mul = np.where(code == 0, f32(0), (s_enc / block).astype(f32)).astype(f32)
    dq = (block * tensor).astype(f32)
    return mul.astype(c), code, dq, np.array([tensor], dtype=f32)


# --------------------------------------------------------------------------- operations
def fp_quantize(x, group_size, fmt, scaling="absmax", saturate=True, mx_rounding="floor",
                stochastic=False, seed=0, offset=0):
    """(codes unpacked uint8 flat, stored scales, dq per group) of x (flat, groups of group_size)."""
    with np.errstate(all="ignore"):      # Inf * 0, NaN arithmetic: IEEE results wanted
        return _fp_quantize(x, group_size, fmt, scaling, saturate, mx_rounding, stochastic, seed, offset)


def _fp_quantize(x, group_size, fmt, scaling, saturate, mx_rounding, stochastic, seed, offset):
    x = np.asarray(x).ravel()
    tensor = None
    if scaling == "absmax":
        mul, stored, dq = absmax_scale(x, group_size, fmt)
    elif scaling == "mx":
        mul, stored, dq = mx_scale(x, group_size, fmt, mx_rounding)
    else:
        mul, stored, dq, tensor = nvfp4_scale(x, group_size)
    v, _ = _scaled(x, group_size, mul)
    if stochastic:
        u = ref.uniforms(seed, offset, x.size).reshape(v.shape)
        codes = to_codes_stochastic(v, u, fmt, saturate)
    else:
        codes = to_codes(v, fmt, saturate)
    scales = stored if tensor is None else (stored, tensor)
    return codes.ravel(), scales, dq


def dequantize(codes, fmt, dq, group_size, dtype):
    """out(C(value) * C(dq)) per element (C = float64 for a float64 result, else float32)."""
    c = compute_dtype(dtype)
    vals = from_codes(codes, fmt).astype(c).reshape(-1, group_size)
    with np.errstate(all="ignore"):
        y = (vals * dq.astype(c)[:, None]).astype(c)
    return y.ravel().astype(ref.DTYPES[np.dtype(dtype).name])


def fake_fp_quantize(x, group_size, fmt, **kw):
    """quantize + dequantize in x's dtype; non-finite elements unchanged."""
    x = np.asarray(x)
    codes, _, dq = fp_quantize(x, group_size, fmt, **kw)
    y = dequantize(codes, fmt, dq, group_size, x.dtype)
    flat = x.ravel()
    with np.errstate(all="ignore"):
        keep = ~np.isfinite(flat.astype(np.float64))
    y[keep] = flat[keep]
    return y.reshape(x.shape)
