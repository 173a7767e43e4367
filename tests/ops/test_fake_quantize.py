"""fake_quantize / ds_quantizer on the CPU: bit-exact against the independent reference, edge
tables, stochastic rounding properties, errors."""
import zlib

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dsquant
import reference as ref
from helpers import check_exact, sample

DTYPES = list(ref.DTYPES)
BITS = [2, 3, 4, 8, 16]
SCHEMES = {"sym": True, "asym": False}
ROUNDING = {"nearest": False, "stochastic": True}
# (numel, groups): S = 1, odd S, one group of everything, S not a power of two, and sizes over the
# large-group threshold (2^15) that take the chunked two-pass path, with one and several groups
SHAPES = {"S1": (37, 37), "S15": (105, 7), "one_group": (1000, 1), "S33": (165, 5),
          "huge_one": (100003, 1), "huge_three": (3 * 40001, 3)}






def _grid():
    """Every dtype x scheme x rounding x bits x shape, except that the two sizes over 50,000
    elements run for 2, 4 and 8 bits only and not for float64 asymmetric (whose reference fma uses
    exact rationals, one element at a time)."""
    for dtype in DTYPES:
        for scheme in SCHEMES:
            for rounding in ROUNDING:
                for bits in BITS:
                    for shape_id, (numel, _) in SHAPES.items():
                        large = numel > 50000
                        if large and (bits in (3, 16) or (dtype, scheme) == ("float64", "asym")):
                            continue
                        yield pytest.param(dtype, scheme, rounding, bits, shape_id,
                                           id=f"{dtype}-{scheme}-{rounding}-{bits}b-{shape_id}")


@pytest.mark.parametrize("dtype,scheme,rounding,bits,shape_id", list(_grid()))
def test_matches_reference(dtype, scheme, rounding, bits, shape_id):
    numel, groups = SHAPES[shape_id]
    x = sample(dtype, numel, seed=zlib.crc32(f"{dtype}{scheme}{rounding}{bits}{shape_id}".encode()))
    kwargs = dict(symmetric=SCHEMES[scheme], stochastic=ROUNDING[rounding])
    got = dsquant.fake_quantize(x, groups, bits, seed=1234 if kwargs["stochastic"] else None, **kwargs)
    expected = ref.fake_quantize(x, groups, bits, seed=1234, offset=0, **kwargs)
    check_exact(got, expected)


# every backend (conftest.backend) on each regime: tiny groups, odd sizes, one group per team, and
# groups large enough for the chunked passes (CUDA: over 4,096 elements; CPU: over 2^15)
BACKEND_SHAPES = {"S1": (37, 37), "S33": (165, 5), "one_group": (1000, 1), "chunked": (40000, 1)}


@pytest.mark.parametrize("shape_id", BACKEND_SHAPES)
@pytest.mark.parametrize("bits", [3, 8])
@pytest.mark.parametrize("rounding", ROUNDING)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_backend_matches_reference(backend, dtype, scheme, rounding, bits, shape_id):
    numel, groups = BACKEND_SHAPES[shape_id]
    x = sample(dtype, numel, seed=zlib.crc32(f"{dtype}{scheme}{rounding}{bits}{shape_id}".encode()))
    kwargs = dict(symmetric=SCHEMES[scheme], stochastic=ROUNDING[rounding])
    seed = 77 if ROUNDING[rounding] else None        # a seed is for stochastic rounding only
    expected = ref.fake_quantize(x, groups, bits, seed=77, offset=0, **kwargs)
    check_exact(backend.get(dsquant.fake_quantize(backend.put(x), groups, bits, seed=seed, **kwargs)), expected)
    inplace = backend.put(x.copy())
    dsquant.ds_quantizer(inplace, groups, bits, sr=False, asym=not SCHEMES[scheme])
    check_exact(backend.get(inplace), ref.fake_quantize(x, groups, bits, symmetric=SCHEMES[scheme]))


# Stream offsets on and off the Philox block boundary (4 positions a block), and near the 2^64
# wrap: each tier's vector Philox starts mid-block and mid-tile, and its ragged last vector
# covers from 1 to all of its blocks (1000/8: tiles of 125 elements; 1537: tiles of 512 and a tail).
SR_OFFSETS = (1, 2, 3, 4097, 2 ** 64 - 1001)


@pytest.mark.parametrize("offset", SR_OFFSETS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_backend_stochastic_at_odd_offsets(backend, dtype, offset):
    from dsquant.core import rng as _rng
    for numel, groups in ((1000, 8), (1537, 1)):
        x = sample(dtype, numel, seed=zlib.crc32(f"{dtype}{offset}{numel}".encode()))
        dsquant.manual_seed(31)
        _rng.GLOBAL.offset = offset
        got = backend.get(dsquant.fake_quantize(backend.put(x), groups, 8, stochastic=True))
        check_exact(got, ref.fake_quantize(x, groups, 8, stochastic=True, seed=31, offset=offset))


@pytest.mark.parametrize("dtype", DTYPES)
def test_ds_quantizer_in_place_matches_reference(dtype):
    x = sample(dtype, 4096, seed=3)
    expected = ref.fake_quantize(x, 16, 8)
    result = dsquant.ds_quantizer(x, groups=16, bit_num=8)
    assert result is x
    check_exact(x, expected)


@pytest.mark.parametrize("asym", [False, True])
def test_ds_quantizer_stochastic_uses_global_stream(asym):
    dsquant.manual_seed(99)
    x = sample("float32", 3000, seed=4)
    first = ref.fake_quantize(x, 3, 4, symmetric=not asym, stochastic=True, seed=99, offset=0)
    second_input = x.copy()
    dsquant.ds_quantizer(x, 3, 4, sr=True, asym=asym)
    check_exact(x, first)
    # the next call continues the stream at offset 3000
    second = ref.fake_quantize(second_input, 3, 4, symmetric=not asym, stochastic=True, seed=99, offset=3000)
    dsquant.ds_quantizer(second_input, 3, 4, sr=True, asym=asym)
    check_exact(second_input, second)


# ----------------------------------------------------------------------------- edge cases
def _f32(v):
    return np.float32(v)


def test_zeros_stay_zero():
    for dtype in DTYPES:
        for sym in (True, False):
            x = np.zeros(64, dtype=ref.DTYPES[dtype])
            got = dsquant.fake_quantize(x, 4, 8, symmetric=sym)
            assert np.array_equal(got.astype(np.float64), np.zeros(64)), (dtype, sym)


def test_constant_group_asymmetric_is_exact():
    # mx == mn: every code is 0 and the result is fma(0, s, mn) = mn exactly
    x = np.full(10, 3.75, dtype=np.float32)
    assert np.array_equal(dsquant.fake_quantize(x, 1, 4, symmetric=False), x)


def test_constant_group_symmetric_clips_to_top_code():
    # x = absmax maps just below 2^(b-1) and rounds to 2^(b-1), clipped to 2^(b-1) - 1 (DeepSpeed's
    # peak clipping): 4 bits -> 7 * (1/s) with s = 16 / (2*2 + 1e-5)
    x = np.full(6, 2.0, dtype=np.float32)
    s = np.float32(16 / (4 + 1e-5))
    expected = np.float32(7) * (np.float32(1) / s)
    assert np.all(dsquant.fake_quantize(x, 1, 4) == expected)


NONFINITE = [np.nan, np.inf, -np.inf]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("rounding", list(ROUNDING))
def test_nonfinite_pass_through_and_do_not_disturb_group(dtype, scheme, rounding):
    clean = sample(dtype, 40, seed=5)
    dirty = clean.copy()
    dirty[[3, 17, 30]] = np.array(NONFINITE).astype(dirty.dtype)
    kwargs = dict(symmetric=SCHEMES[scheme], stochastic=ROUNDING[rounding], seed=11 if ROUNDING[rounding] else None)
    got = dsquant.fake_quantize(dirty, 2, 4, **kwargs)
    # non-finite elements come back with their exact bits
    assert ref.same_bits(got[[3, 17, 30]], dirty[[3, 17, 30]])
    # every other element is what it would be if the bad ones were not part of the statistics
    expected = ref.fake_quantize(dirty, 2, 4, **kwargs)
    check_exact(got, expected)
    finite_only = np.delete(np.arange(40), [3, 17, 30])
    assert np.all(np.isfinite(got[finite_only].astype(np.float64)))


def test_group_without_finite_elements_is_like_zeros():
    x = np.array([np.nan, np.inf, 1.0, 2.0], dtype=np.float32)
    got = dsquant.fake_quantize(x, 2, 8)
    assert np.isnan(got[0]) and got[1] == np.inf
    check_exact(got, ref.fake_quantize(x, 2, 8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_dtype_max_stays_finite_and_close(dtype, scheme):
    info = np.finfo(ref.DTYPES[dtype]) if dtype != "bfloat16" else np.finfo(np.float32)
    big = np.array(info.max, dtype=np.float64)
    if dtype == "bfloat16":
        big = np.float64(ref.BF16.type(3.3895313892515355e38))   # bfloat16 max
    x = np.array([big, -big, big / 2, 0.0]).astype(ref.DTYPES[dtype])
    got = dsquant.fake_quantize(x, 1, 8, symmetric=SCHEMES[scheme]).astype(np.float64)
    assert np.all(np.isfinite(got))
    step = float(big) / 64   # one 8-bit level is 2*max/256; allow a level of error
    assert np.all(np.abs(got - x.astype(np.float64)) <= step), got
    check_exact(dsquant.fake_quantize(x, 1, 8, symmetric=SCHEMES[scheme]),
                ref.fake_quantize(x, 1, 8, symmetric=SCHEMES[scheme]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_subnormals_are_not_flushed(dtype):
    """No flush-to-zero anywhere: a subnormal group minimum comes back exactly from the asymmetric
    fma(0, s, mn), and subnormal values match the reference in both schemes."""
    tiny = {"float16": 2.0 ** -24, "bfloat16": 2.0 ** -133, "float32": 2.0 ** -149, "float64": 2.0 ** -1074}[dtype]
    x = (np.array([3, 2, 3, 64, -64, 5, 7, 0]) * tiny).astype(ref.DTYPES[dtype])
    assert np.all(x.astype(np.float64) == np.array([3, 2, 3, 64, -64, 5, 7, 0]) * tiny)   # really subnormal
    for sym in (True, False):
        check_exact(dsquant.fake_quantize(x, 1, 8, symmetric=sym), ref.fake_quantize(x, 1, 8, symmetric=sym))
    y = np.array([3 * tiny, 1.0, 0.5, 3 * tiny]).astype(ref.DTYPES[dtype])
    got = dsquant.fake_quantize(y, 1, 8, symmetric=False)
    assert got[0] == y[0] and got[3] == y[3] and got[0] != 0


@pytest.mark.parametrize("bits", [2, 16])
def test_subnormal_scale_float32(bits):
    # absmax = float32 max with 2 bits makes s = 2 / max a subnormal float32
    x = np.array([np.finfo(np.float32).max, 1e38, -3e38, 0], dtype=np.float32)
    check_exact(dsquant.fake_quantize(x, 1, bits), ref.fake_quantize(x, 1, bits))


def test_float16_exhaustive_against_reference():
    # every finite float16 value, in groups of 64, both schemes, 4 and 8 bits
    bits_all = np.arange(2 ** 16, dtype=np.uint16)
    x = bits_all.view(np.float16)
    for bits in (4, 8):
        for sym in (True, False):
            check_exact(dsquant.fake_quantize(x, 1024, bits, symmetric=sym),
                        ref.fake_quantize(x, 1024, bits, symmetric=sym))


# every 16-bit pattern (NaN, Inf, subnormals included) on each CPU tier, whose float16 and bfloat16
# nearest paths convert a vector at a time (its saturation a max/min pair): groups of 64 (batches
# of whole groups), of 255 and 17 (on the first 65535 patterns) whose ends are shorter than a
# vector, of 1, and one group of all 65536 (the chunked two-pass path); functional and in place
@pytest.mark.parametrize("tier", ["cpu", "cpu-avx2", "cpu-baseline"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16bit_exhaustive_every_cpu_tier(request, tier, dtype):
    from conftest import CPU_TIERS, _use_isa
    _use_isa(request, CPU_TIERS[tier])
    every = np.arange(2 ** 16, dtype=np.uint16).view(ref.DTYPES[dtype])
    for x, groups in ((every, 1024), (every[:65535], 257), (every[:65535], 3855), (every, 65536), (every, 1)):
        for bits in (4, 8):
            for sym in (True, False):
                expected = ref.fake_quantize(x, groups, bits, symmetric=sym)
                check_exact(dsquant.fake_quantize(x, groups, bits, symmetric=sym), expected)
                inplace = x.copy()
                dsquant.ds_quantizer(inplace, groups, bits, asym=not sym)
                check_exact(inplace, expected)


# float32 and bfloat16 edges on each CPU tier, whose nearest paths run a vector of 16 (AVX-512) or
# 8 (AVX2) elements with the saturation as a max/min pair, and the baseline's scalar loop: +-max
# (bits 2: the scale is subnormal and q/s overflows, so the saturation acts, which the test checks),
# spans beyond the largest value (asymmetric halved operands), +-0 (max/min of equal zeros), NaN
# and +-Inf passing through, subnormals; every length up to 40 (tails of every size), functional
# and in place
def _edges(dtype):
    top = float(ml_dtypes.finfo(ref.DTYPES[dtype]).max)
    tiny = float(ml_dtypes.finfo(ref.DTYPES[dtype]).smallest_subnormal)
    return np.array([top, -top, 0.88 * top, -0.73 * top, 0.5 * top, 0.0, -0.0, np.nan, np.inf, -np.inf, tiny, -tiny,
                     3 * tiny, 1.0, -0.75, 12.5]).astype(ref.DTYPES[dtype])


@pytest.mark.parametrize("tier", ["cpu", "cpu-avx2", "cpu-baseline"])
@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_float_edges_every_cpu_tier(request, tier, scheme, dtype):
    from conftest import CPU_TIERS, _use_isa
    _use_isa(request, CPU_TIERS[tier])
    rng = np.random.default_rng(12)
    sym = SCHEMES[scheme]
    saturated = 0
    for n in range(1, 41):
        x = rng.choice(_edges(dtype), n)
        for bits in (2, 3, 8, 16):
            for groups in sorted({1, n} | ({2} if n % 2 == 0 else set())):
                expected = ref.fake_quantize(x, groups, bits, symmetric=sym)
                saturated += not ref.same_bits(expected, ref.fake_quantize(x, groups, bits, symmetric=sym,
                                                                           saturate=False))
                check_exact(dsquant.fake_quantize(x, groups, bits, symmetric=sym), expected)
                inplace = x.copy()
                dsquant.ds_quantizer(inplace, groups, bits, asym=not sym)
                check_exact(inplace, expected)
    # float32 data reach the saturation (symmetric, near max: q/s overflows); bfloat16's clamp runs
    # too, but its overflow threshold is 2^-9 above its max, beyond where q/s rounds in float
    if sym and dtype == "float32":
        assert saturated > 0
    # groups of only zeros of either sign, and of one value with the sign of zero mixed
    for x in ([-0.0] * 20, [0.0, -0.0] * 10, [-0.0] * 19 + [3.0], [0.0] * 19 + [-3.0]):
        x = np.array(x).astype(ref.DTYPES[dtype])
        for groups in (1, 4, 20):
            expected = ref.fake_quantize(x, groups, 8, symmetric=sym)
            check_exact(dsquant.fake_quantize(x, groups, 8, symmetric=sym), expected)


def _asymmetric_ties(bits, count, seed):
    """Float32 groups (min 0, max m) holding values x whose scaled value (x - 0)·r is exactly
    k + 1/2 in float32 arithmetic (r = 1/s as the contract computes it): half-way cases of the
    asymmetric rounding, which rounds them up (away from zero)."""
    rng = np.random.default_rng(seed)
    rows = []
    while len(rows) < count:
        m = np.float32(rng.uniform(0.5, 100.0))
        s = np.float32((np.float64(m) - 0.0 + 1e-5) / 2.0 ** bits)
        r = np.float32(np.float32(1) / s)
        k = rng.integers(0, 2 ** bits - 1, 64)
        cand = ((k + 0.5) / np.float64(r)).astype(np.float32)
        cand = cand[(cand > 0) & (cand < m)]
        ties = cand[(cand * r).astype(np.float32) == (np.floor((cand * r).astype(np.float32)) + np.float32(0.5))]
        if ties.size >= 8:
            rows.append(np.concatenate([[np.float32(0), m], ties[:30], rng.uniform(0, m, 32 - min(30, ties.size))
                                        .astype(np.float32)])[:32])
    return np.concatenate(rows).astype(np.float32)


@pytest.mark.parametrize("tier", ["cpu", "cpu-avx2", "cpu-baseline"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_asymmetric_ties_round_up_every_cpu_tier(request, tier, bits):
    from conftest import CPU_TIERS, _use_isa
    _use_isa(request, CPU_TIERS[tier])
    x = _asymmetric_ties(bits, 40, seed=bits)
    groups = x.size // 32
    got = dsquant.fake_quantize(x, groups, bits, symmetric=False)
    check_exact(got, ref.fake_quantize(x, groups, bits, symmetric=False))
    # the ties really are ties, and came back one step up: code k + 1
    g = x.reshape(groups, 32)
    s = ((g.max(axis=1, keepdims=True).astype(np.float64) + 1e-5) / 2.0 ** bits).astype(np.float32)
    v = (g * (np.float32(1) / s).astype(np.float32)).astype(np.float32)
    tie = v == np.floor(v) + np.float32(0.5)
    assert tie.sum() >= 8 * groups
    assert np.array_equal(got.reshape(groups, 32)[tie], np.broadcast_to((np.floor(v) + 1) * s, v.shape)[tie]
                          .astype(np.float32))


# every 16-bit pattern through stochastic rounding on each CPU tier, whose float16 and bfloat16
# stochastic paths convert a vector at a time in steps of 128 stream positions that start on Philox
# block boundaries: groups of 64, 255 and 17 (ends shorter than a vector), one group of 2^16 (the
# chunked passes), stream offsets on and off a block boundary (partial first and last steps);
# functional and in place (input = output)
@pytest.mark.parametrize("offset", [0, 3])
@pytest.mark.parametrize("tier", ["cpu", "cpu-avx2", "cpu-baseline"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16bit_exhaustive_stochastic_every_cpu_tier(request, tier, dtype, offset):
    from conftest import CPU_TIERS, _use_isa

    from dsquant.core import rng as _rng
    _use_isa(request, CPU_TIERS[tier])
    every = np.arange(2 ** 16, dtype=np.uint16).view(ref.DTYPES[dtype])
    for x, groups in ((every, 1024), (every[:65535], 257), (every[:65535], 3855), (every, 1)):
        for sym in (True, False):
            expected = ref.fake_quantize(x, groups, 4, symmetric=sym, stochastic=True, seed=9, offset=offset)
            dsquant.manual_seed(9)
            _rng.GLOBAL.offset = offset
            check_exact(dsquant.fake_quantize(x, groups, 4, symmetric=sym, stochastic=True), expected)
            inplace = x.copy()
            dsquant.manual_seed(9)
            _rng.GLOBAL.offset = offset
            dsquant.ds_quantizer(inplace, groups, 4, sr=True, asym=not sym)
            check_exact(inplace, expected)


def test_empty_arrays_are_returned_unchanged():
    x = np.zeros((0, 3), dtype=np.float32)
    out = dsquant.fake_quantize(x, 1, 8)
    assert out.shape == (0, 3) and out.dtype == np.float32
    assert dsquant.ds_quantizer(x) is x


def test_asymmetric_uses_exactly_2_to_the_bits_levels():
    rng = np.random.default_rng(8)
    x = rng.uniform(-3, 5, 100000).astype(np.float32)
    for bits in (2, 3, 4):
        assert len(np.unique(dsquant.fake_quantize(x, 1, bits, symmetric=False))) == 2 ** bits
        assert len(np.unique(dsquant.fake_quantize(x, 1, bits))) <= 2 ** bits


# ----------------------------------------------------------------------------- properties
finite_f32 = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@given(values=st.lists(finite_f32, min_size=1, max_size=300), data=st.data())
def test_property_matches_reference_float32(values, data):
    x = np.array(values, dtype=np.float32)
    divisors = [d for d in range(1, x.size + 1) if x.size % d == 0]
    groups = data.draw(st.sampled_from(divisors))
    bits = data.draw(st.integers(2, 16))
    sym = data.draw(st.booleans())
    sr = data.draw(st.booleans())
    got = dsquant.fake_quantize(x, groups, bits, symmetric=sym, stochastic=sr, seed=5 if sr else None)
    check_exact(got, ref.fake_quantize(x, groups, bits, symmetric=sym, stochastic=sr, seed=5 if sr else None))


@given(values=st.lists(st.floats(-60000, 60000, allow_nan=False, width=16), min_size=1, max_size=200),
       bits=st.integers(2, 16), sym=st.booleans())
def test_property_error_bound_float16(values, bits, sym):
    """Nearest rounding never moves a value by more than one quantization step (the clipped peak
    is the worst case), plus the final rounding of the result to float16."""
    x = np.array(values, dtype=np.float16)
    y = dsquant.fake_quantize(x, 1, bits, symmetric=sym).astype(np.float64)
    xd = x.astype(np.float64)
    span = 2 * np.abs(xd).max() if sym else xd.max() - xd.min()
    step = (span + 1e-5) / 2 ** bits
    assert np.all(np.abs(y - xd) <= step * 1.0001 + np.abs(y) * 2 ** -11 + 2 ** -24)


def test_error_bound_regression_clipped_peak_float16():
    # found by hypothesis: the clipped asymmetric peak is a full step away, and the result's own
    # float16 rounding (relative to the result, not the input) comes on top
    x = np.array([1.5, -1030.0], dtype=np.float16)
    y = dsquant.fake_quantize(x, 1, 2, symmetric=False).astype(np.float64)
    step = (1031.5 + 1e-5) / 4
    assert abs(y[0] - 1.5) > step * 0.999                 # the peak really is clipped by a step
    assert abs(y[0] - 1.5) <= step * 1.0001 + abs(y[0]) * 2 ** -11


# ----------------------------------------------------------------------------- stochastic rounding
def test_stochastic_is_unbiased():
    """The mean over many seeds converges to the input: with K seeds each output is x plus a
    zero-mean error of at most one step, so |mean - x| <= 5 * step / (2 sqrt(K)) except with
    probability below 1e-5 per element (Hoeffding). Values above the top code (the positive peak,
    which the scale maps past 2^(b-1) - 1, as in DeepSpeed) are clipped and excluded."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal(512).astype(np.float32)
    K = 400
    for sym in (True, False):
        acc = np.zeros(512)
        for seed in range(K):
            acc += dsquant.fake_quantize(x, 1, 3, symmetric=sym, stochastic=True, seed=seed)
        mean = acc / K
        span = 2 * np.abs(x).max() if sym else x.max() - x.min()
        step = span / 8
        top = (np.abs(x).max() - step) if sym else (x.max() - step)
        inside = x <= top
        assert inside.sum() > 400
        err = np.abs(mean - x)[inside]
        assert np.all(err <= 5 * step / (2 * np.sqrt(K))), err.max()
        # nearest rounding has a systematic error that stochastic rounding must not have
        nearest_err = np.abs(dsquant.fake_quantize(x, 1, 3, symmetric=sym) - x)[inside].mean()
        assert err.mean() < nearest_err / 4


def test_stochastic_reproducible_with_seed():
    x = sample("bfloat16", 5000, seed=13)
    a = dsquant.fake_quantize(x, 10, 4, stochastic=True, seed=77)
    b = dsquant.fake_quantize(x, 10, 4, stochastic=True, seed=77)
    c = dsquant.fake_quantize(x, 10, 4, stochastic=True, seed=78)
    assert ref.same_bits(a, b)
    assert not ref.same_bits(a, c)


def test_stochastic_differs_across_calls_without_seed_and_manual_seed_replays():
    x = sample("float32", 5000, seed=14)
    dsquant.manual_seed(2024)
    a = dsquant.fake_quantize(x, 10, 4, stochastic=True)
    b = dsquant.fake_quantize(x, 10, 4, stochastic=True)
    assert not ref.same_bits(a, b)
    dsquant.manual_seed(2024)
    assert ref.same_bits(dsquant.fake_quantize(x, 10, 4, stochastic=True), a)
    assert ref.same_bits(dsquant.fake_quantize(x, 10, 4, stochastic=True), b)
    # the global stream advanced by exactly the 5000 draws of the first call
    check_exact(b, ref.fake_quantize(x, 10, 4, stochastic=True, seed=2024, offset=5000))


def test_nearest_calls_do_not_advance_the_stream():
    x = sample("float32", 100, seed=15)
    dsquant.manual_seed(5)
    dsquant.fake_quantize(x, 1, 4)
    check_exact(dsquant.fake_quantize(x, 1, 4, stochastic=True),
                ref.fake_quantize(x, 1, 4, stochastic=True, seed=5, offset=0))


def test_large_seed_uses_both_key_words():
    x = sample("float32", 200, seed=16)
    seed = (0xDEADBEEF << 32) | 0x12345678
    check_exact(dsquant.fake_quantize(x, 2, 4, stochastic=True, seed=seed),
                ref.fake_quantize(x, 2, 4, stochastic=True, seed=seed))


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("groups,exc", [(0, ValueError), (-2, ValueError), (7, ValueError),
                                        (2.0, TypeError), (True, TypeError), ("4", TypeError)])
def test_bad_groups(groups, exc):
    with pytest.raises(exc, match="groups"):
        dsquant.fake_quantize(np.zeros(12, np.float32), groups)


@pytest.mark.parametrize("bits,exc", [(1, ValueError), (17, ValueError), (0, ValueError), (8.0, TypeError)])
def test_bad_bits(bits, exc):
    with pytest.raises(exc, match="bits"):
        dsquant.fake_quantize(np.zeros(12, np.float32), 1, bits)
    with pytest.raises(exc, match="bit_num"):
        dsquant.ds_quantizer(np.zeros(12, np.float32), 1, bits)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.uint16, np.complex64, np.bool_])
def test_unsupported_dtypes(dtype):
    with pytest.raises(TypeError, match="dtype"):
        dsquant.fake_quantize(np.zeros(8, dtype=dtype))


@pytest.mark.parametrize("value", [[1.0, 2.0], 3.0, None, "abc", np.float32(1.0)])
def test_non_array_input(value):
    with pytest.raises(TypeError, match="must be an array"):
        dsquant.fake_quantize(value)
    with pytest.raises(TypeError, match="must be an array"):
        dsquant.ds_quantizer(value)


def test_in_place_refuses_read_only_numpy():
    x = np.ones(8, np.float32)
    x.setflags(write=False)
    with pytest.raises(BufferError, match="fake_quantize"):
        dsquant.ds_quantizer(x)
    # the functional form accepts it
    assert dsquant.fake_quantize(x).shape == (8,)


def test_in_place_refuses_zero_and_negative_strides():
    base = np.arange(8, dtype=np.float32)
    with pytest.raises(BufferError, match="fake_quantize"):
        dsquant.ds_quantizer(np.broadcast_to(base[:1], (8,)))
    with pytest.raises(BufferError, match="fake_quantize"):
        dsquant.ds_quantizer(base[::-1])
    # functional form handles both
    check_exact(dsquant.fake_quantize(base[::-1], 2, 4), ref.fake_quantize(base[::-1].copy(), 2, 4))


def test_bad_flags_and_seed():
    x = np.zeros(8, np.float32)
    with pytest.raises(TypeError, match="symmetric"):
        dsquant.fake_quantize(x, symmetric="yes")
    with pytest.raises(TypeError, match="seed"):
        dsquant.fake_quantize(x, stochastic=True, seed=1.5)
    with pytest.raises(ValueError, match="seed"):
        dsquant.fake_quantize(x, stochastic=True, seed=-1)
    with pytest.raises(ValueError, match="seed"):
        dsquant.manual_seed(2 ** 64)


def test_stream_positions_wrap_modulo_2_64():
    """The global stream's offset wraps modulo 2^64; a call whose positions cross the wrap uses
    positions offset + i mod 2^64 (tiles straddling the wrap included)."""
    from dsquant.core import rng as _rng
    x = sample("float32", 3000, seed=17)
    dsquant.manual_seed(3)
    _rng.GLOBAL.offset = 2 ** 64 - 1001     # inside a tile, not on a block boundary
    got = dsquant.fake_quantize(x, 3, 4, stochastic=True)
    assert _rng.GLOBAL.offset == 1999
    check_exact(got, ref.fake_quantize(x, 3, 4, stochastic=True, seed=3, offset=2 ** 64 - 1001))
