"""DeepSpeed FP quantizer records (dsquant.ops.fp_ds) on every backend, bit for bit against
tests/reference_fp_ds.py (NumPy, written from the spec): DeepSpeed's code space (compat=True) and
the OCP formats of the default mode."""
import functools

import ml_dtypes
import numpy as np
import pytest
import reference_fp_ds as ref

from dsquant.ops import fp_ds

# DeepSpeed's code space (compat=True); the default mode's OCP formats are tested at the end
quantize = functools.partial(fp_ds.quantize_records, compat=True)
dequantize = functools.partial(fp_ds.dequantize_records, compat=True)

FORMATS = [(8, 3), (8, 2), (12, 7), (6, 2), (4, 1)]
FMT_IDS = ["e4m3", "e5m2", "e4m7", "e3m2", "e2m1"]
DTYPES = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]
DT_IDS = ["f16", "bf16", "f32", "f64"]
UNIT = {8: 1, 4: 2, 6: 4, 12: 2}


def _factor(fmt, dtype):
    """A power of two that brings the format's range into float16's (E5M2's 114688 is beyond it)."""
    return 0.25 if np.dtype(dtype) == np.float16 and fmt == (8, 2) else 1.0


def _adversarial(q_bits, m, n, rng, dtype):
    """Values whose scaled images hit code values, midpoints (ties), the region below the smallest
    code, zeros of both signs and the saturation edge; plus ordinary random values."""
    mags = ref.magnitudes(q_bits, m)
    q_range = ref.FORMATS[(q_bits, m)][1]
    mids = (mags[:-1] + mags[1:]) / 2
    picks = np.concatenate([mags, mids, [0.0, -0.0, mags[0] / 2, mags[0] / 3, q_range]])
    picks = picks * rng.choice([-1.0, 1.0], size=picks.size)
    vals = rng.choice(picks, size=n)
    vals[::7] = rng.standard_normal(vals[::7].size) * 50
    return (vals * _factor((q_bits, m), dtype)).astype(dtype)


def _groups_with_peak(x, group_size, peak):
    """Every group's first element is the peak, so that inv is a power of two and the scaled
    values are the picks themselves (ties stay ties)."""
    x = x.reshape(-1, group_size).copy()
    x[:, 0] = peak
    return x.reshape(-1)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("fmt", FORMATS, ids=FMT_IDS)
def test_quantize_records_match_reference(backend, fmt, dtype):
    q_bits, m = fmt
    rng = np.random.default_rng(q_bits * 10 + m)
    group_size = 4 * UNIT[q_bits] * 5       # 20 / 40 / 80 / 40 elements
    x = _adversarial(q_bits, m, group_size * 9, rng, dtype)
    peak = ref.FORMATS[fmt][1] * _factor(fmt, dtype)
    x[: group_size * 6] = _groups_with_peak(x[: group_size * 6], group_size, peak)
    got = backend.get(quantize(backend.put(x), group_size, q_bits, m))
    want = ref.quantize_records(x, group_size, q_bits, m)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("group_size,q_bits,m", [(1, 8, 3), (7, 8, 2), (1537, 8, 3), (3000, 4, 1), (2052, 6, 2),
                                                 (1538, 12, 7)])
def test_any_group_size(backend, group_size, q_bits, m):
    """Odd sizes, one element, and sizes past DeepSpeed's 1,536 limit (defect #41)."""
    x = np.random.default_rng(group_size).standard_normal(group_size * 3).astype(np.float32)
    got = backend.get(quantize(backend.put(x), group_size, q_bits, m))
    np.testing.assert_array_equal(got, ref.quantize_records(x, group_size, q_bits, m))


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("fmt", FORMATS, ids=FMT_IDS)
def test_every_code_decodes_as_deepspeed_means(backend, fmt, dtype):
    """Records holding every code of the format (so every record DeepSpeed can write), with
    ordinary, zero, subnormal, huge, infinite and NaN scales."""
    q_bits, m = fmt
    codes = np.arange(1 << q_bits)
    group_size = codes.size
    scales = np.array([1.0, 0.5, 3.1e-3, 0.0, 1e-40, 3e38, np.inf, np.nan], np.float32)
    all_codes = np.tile(codes, scales.size)
    records = ref.pack_records(all_codes, scales, group_size, q_bits)
    got = backend.get(dequantize(backend.put(records), group_size, q_bits, m, dtype=np.dtype(dtype)))
    want = ref.decode(all_codes, scales, group_size, q_bits, m, dtype)
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


@pytest.mark.parametrize("code,val", [(0x38, 1.0), (0x45, 3.25), (0x7B, 352.0), (0x7F, 480.0), (0xFF, -480.0),
                                      (0x08, 2.0 ** -6), (0x40, 2.0), (0xC0, -2.0), (0x00, 2.0 ** -7),
                                      (0x80, -(2.0 ** -7))])
def test_deepspeed_e4m3_examples(code, val):
    """Codes of the spec's worked examples (§7.3: what DeepSpeed's encoder writes for 1.0, 3.3,
    360, 480, -480, 0.001 and 0.0) and exponent code 0, which DeepSpeed decodes as 2^-7·(1+m/8)."""
    records = np.array([code, 0, 0, 0x80, 0x3F], np.uint8)     # scale 1.0
    assert dequantize(records, 1, 8, 3)[0] == val


@pytest.mark.parametrize("code,val", [(0x6, 4.0), (0x2, 1.0), (0x4, 2.0), (0x0, 0.5), (0x7, 6.0), (0xF, -6.0)])
def test_deepspeed_e2m1_examples(code, val):
    records = np.array([code | (code << 4), 0, 0, 0x80, 0x3F], np.uint8)
    np.testing.assert_array_equal(dequantize(records, 2, 4, 1), [val, val])


def test_round_trip_of_records(backend):
    """decode(encode(x)) re-encodes to the same records: the code space is closed."""
    x = np.random.default_rng(3).standard_normal(4096).astype(np.float32)
    for q_bits, m in FORMATS:
        r1 = quantize(backend.put(x), 64, q_bits, m)
        y = dequantize(r1, 64, q_bits, m)
        r2 = quantize(y, 64, q_bits, m)
        np.testing.assert_array_equal(backend.get(r1), backend.get(r2))


@pytest.mark.parametrize("dtype,absmax", [(np.float32, 1e-39), (np.float32, 3e-37),
                                          (np.float32, 2.2e-36),    # pre-scaled though q_range/absmax is finite
                                          (np.float64, 1e-310), (np.float64, 1e300), (ml_dtypes.bfloat16, 1e-39)])
def test_groups_near_the_ends_of_the_range(backend, dtype, absmax):
    """Groups so small that q_range / absmax overflows (x is pre-scaled by 2^64), and float64
    groups beyond float32's range (the stored scale saturates)."""
    x = (np.random.default_rng(12).uniform(-1, 1, 32) * absmax).astype(dtype)
    got = backend.get(quantize(backend.put(x), 16, 8, 3))
    np.testing.assert_array_equal(got, ref.quantize_records(x, 16, 8, 3))


def test_tiny_group_decodes_to_its_values():
    """Without the pre-scaling, v = x·max would decode far from x (inv·scale != 1)."""
    x = np.array([1e-39, -5e-40, 2.5e-40, 0.0], np.float32)
    y = dequantize(quantize(x, 4, 8, 3), 4, 8, 3)
    np.testing.assert_allclose(y, x, rtol=2 ** -3, atol=1e-39 / 61440 * 1.01)   # 0 -> +min code


def test_zero_nan_inf_policy(backend):
    x = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 240.0, 1e-9, -1e-9], np.float32)
    r = backend.get(quantize(backend.put(x), 8, 8, 3))
    # absmax over finite elements is 240 -> inv 2; 0 -> +min, -0 -> -min, NaN -> code 0, ±Inf -> ±480
    np.testing.assert_array_equal(r[0, :8], [0x00, 0x80, 0x00, 0x7F, 0xFF, 0x7F, 0x00, 0x80])
    assert r[0, 8:].view(np.float32)[0] == np.float32(0.5)
    zero = backend.get(quantize(backend.put(np.zeros(4, np.float32)), 4, 8, 3))
    assert zero[0, 4:].view(np.float32)[0] == 0.0
    np.testing.assert_array_equal(backend.get(dequantize(backend.put(zero), 4, 8, 3)), np.zeros(4))


def test_split_layout_equals_records(backend):
    x = np.random.default_rng(5).standard_normal((4, 6, 16)).astype(np.float32)
    records = backend.get(quantize(backend.put(x), 32, 8, 3))
    codes, scales = (backend.get(a) for a in quantize(backend.put(x), 32, 8, 3, split=True))
    assert codes.shape == x.shape and scales.shape == (12, 4)
    np.testing.assert_array_equal(codes.reshape(12, 32), records[:, :32])
    np.testing.assert_array_equal(scales, records[:, 32:])
    y1 = backend.get(dequantize(backend.put(records), 32, 8, 3))
    y2 = backend.get(dequantize(backend.put(codes), 32, 8, 3, scales=backend.put(scales)))
    y3 = backend.get(dequantize(backend.put(codes), 32, 8, 3,
                                              scales=backend.put(scales.view(np.float32))))
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(y1, y3)


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_selective_dequantize(backend, index_dtype):
    x = np.random.default_rng(6).standard_normal((5, 4, 12)).astype(np.float32)
    records = quantize(backend.put(x), 12, 6, 2)
    full = backend.get(dequantize(records, 12, 6, 2)).reshape(5, 48)
    rows = np.array([4, 1, 1], index_dtype)
    got = backend.get(dequantize(records, 12, 6, 2, rows=backend.put(rows), row_elems=48,
                                               shape=(3, 4, 12)))
    np.testing.assert_array_equal(got.reshape(3, 48), full[[4, 1, 1]])
    with pytest.raises(IndexError, match="0..4"):
        dequantize(records, 12, 6, 2, rows=backend.put(np.array([0, 5], index_dtype)),
                                 row_elems=48, shape=(2, 48))


def test_out_buffer_is_written(backend):
    x = np.random.default_rng(8).standard_normal(64).astype(np.float32)
    out = backend.put(np.ones((4, 16 * 4 // 8 + 4), np.uint8))
    got = quantize(backend.put(x), 16, 4, 1, out=out)
    assert got is out
    np.testing.assert_array_equal(backend.get(out), ref.quantize_records(x, 16, 4, 1))


@pytest.mark.parametrize("fmt", FORMATS, ids=FMT_IDS)
def test_stochastic_rounding_picks_a_neighbour_and_is_reproducible(backend, fmt):
    q_bits, m = fmt
    x = np.random.default_rng(9).standard_normal(40 * 8).astype(np.float32)
    a = backend.get(quantize(backend.put(x), 40, q_bits, m, stochastic=True, seed=11))
    b = backend.get(quantize(backend.put(x), 40, q_bits, m, stochastic=True, seed=11))
    np.testing.assert_array_equal(a, b)
    cpu = quantize(x, 40, q_bits, m, stochastic=True, seed=11)
    np.testing.assert_array_equal(a, cpu)                 # bit-identical across backends
    codes, scales = ref.unpack_records(a, 40, q_bits)
    v, want_scales = ref.scaled(x, 40, q_bits, m)
    np.testing.assert_array_equal(scales, want_scales)
    lo, hi = ref.neighbours(v, q_bits, m)
    assert np.all((codes == lo) | (codes == hi))
    assert np.any(codes != ref.encode_nearest(v, q_bits, m))  # it is not nearest rounding


@pytest.mark.parametrize("fmt", [(8, 3), (4, 1)], ids=["e4m3", "e2m1"])
def test_stochastic_rounding_is_unbiased(fmt):
    """The mean of many stochastic roundings of a value is the value (DeepSpeed's truncates, #40)."""
    q_bits, m = fmt
    q_range = ref.FORMATS[fmt][1]
    v = np.array([q_range, 1.3, 0.77, -2.6, 0.1, -0.02, 0.0, 5.1 if q_bits == 4 else 300.5], np.float32)
    x = np.tile(v, 4000)                                 # groups of 8, each with the peak: inv = 1
    r = quantize(x, 8, q_bits, m, stochastic=True, seed=2)
    y = dequantize(r, 8, q_bits, m, dtype="float64").reshape(-1, 8)
    lo, hi = ref.neighbours(v.astype(np.float64), q_bits, m)
    gap = np.abs(np.array([ref.value(int(b), q_bits, m) - ref.value(int(a), q_bits, m) for a, b in zip(lo, hi)]))
    # 4 standard deviations of the mean of 4000 draws (each within gap/2 of its mean)
    assert np.all(np.abs(y.mean(axis=0) - v) <= 4 * (gap / 2) / np.sqrt(4000)), (y.mean(axis=0), v)
    assert np.all(gap[1:6] > 0)     # the values are between codes: nearest rounding would be biased


def test_errors():
    x = np.zeros(24, np.float32)
    with pytest.raises(ValueError, match="q_bits must be 8, 12, 6 or 4"):
        quantize(x, 8, 5)
    with pytest.raises(ValueError, match="no DeepSpeed FP format"):
        quantize(x, 8, 8, 4)
    with pytest.raises(ValueError, match="multiple of 4"):
        quantize(x, 6, 6)
    with pytest.raises(ValueError, match="does not divide"):
        quantize(x, 16, 8)
    with pytest.raises(TypeError, match="val has dtype int32"):
        quantize(np.zeros(8, np.int32), 8)
    with pytest.raises(ValueError, match="record"):
        dequantize(np.zeros(13, np.uint8), 8, 8)
    with pytest.raises(ValueError, match="seed"):
        quantize(x, 8, seed=3)
    with pytest.raises(ValueError, match="split=True"):
        quantize(x, 8, split=True, out=np.zeros((3, 12), np.uint8))


# ------------------------------------------------------------------------------ the default mode: OCP codes
OCP_FORMATS = [(8, 3), (8, 2), (6, 2), (4, 1)]
OCP_IDS = ["e4m3", "e5m2", "e3m2", "e2m1"]


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("fmt", OCP_FORMATS, ids=OCP_IDS)
def test_ocp_records_match_reference(backend, fmt, dtype):
    q_bits, m = fmt
    rng = np.random.default_rng(q_bits * 7 + m)
    group_size = 4 * UNIT[q_bits] * 5
    x = _adversarial(q_bits, m, group_size * 9, rng, dtype)
    x[:4] = [np.nan, np.inf, -np.inf, -0.0]
    got = backend.get(fp_ds.quantize_records(backend.put(x), group_size, q_bits, m))
    np.testing.assert_array_equal(got, ref.ocp_quantize_records(x, group_size, q_bits, m))
    y = backend.get(fp_ds.dequantize_records(backend.put(got), group_size, q_bits, m, dtype=np.dtype(dtype)))
    codes, scales = ref.unpack_records(got, group_size, q_bits)
    want = ref.ocp_decode(codes, scales, group_size, q_bits, m, dtype)
    np.testing.assert_array_equal(np.isnan(y.astype(np.float64)), np.isnan(want.astype(np.float64)))
    ok = ~np.isnan(want.astype(np.float64))
    np.testing.assert_array_equal(y[ok].view(np.uint8), want[ok].view(np.uint8))


@pytest.mark.parametrize("fmt", OCP_FORMATS, ids=OCP_IDS)
def test_ocp_records_hold_fp_quantizes_codes_and_scales(fmt):
    """The default mode's records are dsquant.fp_quantize's codes and scales, joined per group
    (stochastic rounding included: the same random stream positions)."""
    import dsquant
    q_bits, m = fmt
    name = {(8, 3): "e4m3", (8, 2): "e5m2", (6, 2): "e3m2", (4, 1): "e2m1"}[fmt]
    x = np.random.default_rng(13).standard_normal(64 * 6).astype(np.float32)
    for kw in ({}, {"stochastic": True, "seed": 5}):
        records = fp_ds.quantize_records(x, 64, q_bits, m, **kw)
        codes, scales = dsquant.fp_quantize(x, 64, name, **kw)
        cb = 64 * q_bits // 8
        np.testing.assert_array_equal(records[:, :cb], codes.reshape(6, cb))
        np.testing.assert_array_equal(records[:, cb:].copy().view("<f4").reshape(-1), scales)


def test_ocp_has_no_12_bit_format():
    with pytest.raises(ValueError, match="compat=True"):
        fp_ds.quantize_records(np.zeros(8, np.float32), 8, 12)
