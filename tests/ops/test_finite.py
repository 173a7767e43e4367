"""Finite in, finite out (issue 13): near the largest finite value of a dtype the contract's
formulas overflow (fake quantization at 2 bits: s is subnormal, 1/s coarse, q·(1/s) beyond max);
every op saturates at the output dtype's largest finite value instead, which changes no result that
was finite before (checked over a grid against the unsaturated formula)."""
import numpy as np
import pytest

import dsquant
import reference as ref
import reference_int as ref_int
import reference_zeropp as ref_zpp
from _optional import require
from dsquant.ops.integer import dequantize_unsigned_half

ml_dtypes = require("ml_dtypes")

DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32, "float64": np.float64}


def near_max(dtype, n_groups=24, size=6, seed=0):
    """Groups mixing +-max, values a few ulps below it, moderate values and zeros."""
    dt = np.dtype(dtype)
    top = np.finfo(dt).max.astype(np.float64)
    rng = np.random.default_rng(seed)
    bits_u = {2: np.uint16, 4: np.uint32, 8: np.uint64}[dt.itemsize]
    below = (np.array(np.finfo(dt).max, dt).view(bits_u) - np.arange(4, dtype=bits_u)).view(dt)
    pool = np.concatenate([below, -below, np.array([top / 3, -top / 7, 1.0, -1.0, 0.0], np.float64).astype(dt)])
    x = rng.choice(pool, n_groups * size)
    x[::size] = rng.choice(below, n_groups) * rng.choice([-1, 1], n_groups).astype(dt)   # every group near max
    return x.astype(dt)


def test_the_issue_case():
    x = np.array([-np.finfo(np.float32).max, 1.0], np.float32)
    y = dsquant.fake_quantize(x, 1, 2)
    assert np.isfinite(y).all()
    assert ref.same_bits(y, ref.fake_quantize(x, 1, 2))
    assert not np.isfinite(ref.fake_quantize(x, 1, 2, saturate=False)).all()    # the old formula overflowed


def _finite(a):
    return np.isfinite(np.asarray(a).astype(np.float64))


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("scheme", ["sym", "asym"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_fake_quantize_near_max_is_finite_and_changes_only_overflows(dtype, scheme, rounding):
    sym, sr = scheme == "sym", rounding == "stochastic"
    rng = np.random.default_rng(1)
    top = float(np.finfo(np.dtype(DTYPES[dtype])).max)
    ordinary = np.clip(rng.standard_normal(24 * 6) * np.exp(rng.uniform(-20, 20, 24 * 6)), -top, top)
    ordinary = ordinary.astype(DTYPES[dtype])
    overflowed = 0
    for x in (near_max(DTYPES[dtype]), ordinary):
        for bits in range(2, 17):
            kw = {"symmetric": sym, "stochastic": sr}
            got = dsquant.fake_quantize(x, 24, bits, seed=7 if sr else None, **kw)
            assert _finite(got).all(), f"{bits} bits: {got}"
            assert ref.same_bits(got, ref.fake_quantize(x, 24, bits, seed=7, **kw)), ref.first_difference(
                got, ref.fake_quantize(x, 24, bits, seed=7, **kw))
            old = ref.fake_quantize(x, 24, bits, seed=7, saturate=False, **kw)
            was_finite = _finite(old)
            overflowed += int((~was_finite).sum())
            assert ref.same_bits(got[was_finite], old[was_finite])           # bits kept where finite
            top = np.finfo(np.dtype(DTYPES[dtype])).max
            assert (np.abs(got[~was_finite].astype(np.float64)) == float(top)).all()   # else saturated
    if dtype in ("float32", "float64") and sym and not sr:
        assert overflowed > 0        # the grid does reach the overflow (2 bits)


def test_ds_quantizer_near_max_is_finite():
    x = near_max(np.float32)
    expected = ref.fake_quantize(x, 24, 2)
    assert ref.same_bits(dsquant.ds_quantizer(x, 24, 2), expected) and np.isfinite(x).all()


@pytest.mark.parametrize("out_dtype", list(DTYPES))
@pytest.mark.parametrize("scheme", ["sym", "asym"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_quantize_dequantize_near_max_are_finite(dtype, scheme, out_dtype):
    sym = scheme == "sym"
    x = near_max(DTYPES[dtype], seed=2)
    if dtype == "float64":     # beyond float32's range too: the float32 params saturate
        x = np.concatenate([x, (near_max(np.float32, seed=3).astype(np.float64) * 1e200)])
    groups = x.size // 6
    for bits in range(2, 9):
        q, params = dsquant.quantize(x, groups, bits, symmetric=sym)
        exp_q, exp_p = ref_int.quantize_ref(x, groups, bits, sym)
        assert np.array_equal(q.view(np.uint8).reshape(-1), exp_q) and ref.same_bits(params, exp_p)
        assert np.isfinite(params).all()
        y = dsquant.dequantize(q, params, bits, dtype=out_dtype)
        assert _finite(y).all()
        assert ref.same_bits(y.reshape(-1), ref_int.dequantize_ref(q.view(np.uint8), params, bits, out_dtype))


def test_dequantize_keeps_ieee_results_for_non_finite_params():
    q = np.array([1, -1, 0, 2], np.int8)
    params = np.array([[np.inf], [np.nan]], np.float32)
    y = dsquant.dequantize(q, params, 8)
    assert y[0] == np.inf and y[1] == -np.inf and np.isnan(y[2:]).all()


def test_zeropp_ops_near_max_are_finite():
    x = near_max(np.float32, n_groups=8, size=8, seed=4)
    q, p = dsquant.swizzle_quantize(x, 8, 4, nodes=2, devices_per_node=2)
    eq, ep = ref_zpp.swizzle_ref(x, 8, 4, True, 1, 2, 2)
    assert np.array_equal(q.view(np.uint8), eq) and ref.same_bits(p, ep) and np.isfinite(p).all()
    r, rp = dsquant.quantized_reduction(q, p, 8, 4, bits=4, devices_per_node=2)
    er, erp = ref_zpp.reduction_ref(q.view(np.uint8), p, 8, 4, 4, True, 2)
    assert np.array_equal(r.view(np.uint8), er) and ref.same_bits(rp, erp) and np.isfinite(rp).all()
    err = np.zeros(x.size, np.float32)
    lq, lp = dsquant.loco_swizzle_quantize(x, err, 0.5, 8, 4)
    elq, elp, eerr = ref_zpp.loco_swizzle_ref(x, np.zeros(x.size, np.float32), 0.5, 8, 4, True)
    assert np.array_equal(lq.view(np.uint8), elq) and ref.same_bits(lp, elp)
    assert ref.same_bits(err, eerr) and np.isfinite(err).all()


def test_unsigned_half_dequantization_saturates():
    data = np.array([0xFF, 0x10], np.uint8)
    scale = np.array([2.0 ** -24], np.float16)         # 255 / 2^-24 is far beyond float16
    minimum = np.array([60000.0], np.float16)
    y = dequantize_unsigned_half(data, scale, minimum, 1, 2, 8)
    assert np.isfinite(y).all() and y.tolist() == [[65504.0, 65504.0]]
    assert ref.same_bits(y, ref_int.uint_half_ref(data, scale, minimum, 1, 2, 8))
