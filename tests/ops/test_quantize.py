"""dsquant.quantize / dsquant.dequantize on the CPU: bit-exact against the independent reference
(reference_int.py), exact byte tables for packing and edge values, round trips, interop, errors."""
import functools
import math
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import dsquant
import helpers
import reference_int as ref
from _optional import require
from helpers import SPECIALS, same_bits

jnp = require("jax.numpy")
ml_dtypes = require("ml_dtypes")

DTYPES = list(ref.DTYPES)
BITS = [2, 3, 4, 5, 6, 7, 8]
SCHEMES = {"sym": True, "asym": False}
# shape, groups: S = 1 and S = 3 (group boundaries inside bytes for packed codes), S = 13 (odd),
# one group, S > 16,384 (where DeepSpeed launches nothing), and sizes over the 2^15 large-group
# threshold that take the chunked two-pass path: one group, three groups, and odd S = 40,001
LAYOUTS = {"S1": ((40,), 40), "S3": ((6, 8), 16), "S13": ((13, 4), 4), "one_group": ((1000,), 1),
           "S20000": ((3, 20000), 3), "huge_one": ((100004,), 1), "huge_three": ((3, 40004), 3),
           "huge_odd": ((40001, 4), 4)}
sample = functools.partial(helpers.sample, specials=True)     # integer tests meet NaN/Inf/±0 too






def check_quantize(x, groups, bits, symmetric):
    q, params = dsquant.quantize(x, groups, bits, symmetric=symmetric)
    exp_q, exp_params = ref.quantize_ref(x, groups, bits, symmetric)
    assert q.dtype == np.int8 and params.dtype == np.float32
    assert params.shape == (groups, 1 if symmetric else 2)
    assert same_bits(q.view(np.uint8), exp_q)
    assert same_bits(params, exp_params)
    return q, params


def _grid():
    for dtype in DTYPES:
        for scheme in SCHEMES:
            for bits in BITS:
                for layout in LAYOUTS:
                    yield pytest.param(dtype, scheme, bits, layout, id=f"{dtype}-{scheme}-{bits}b-{layout}")


@pytest.mark.parametrize("dtype,scheme,bits,layout", list(_grid()))
def test_quantize_matches_reference(dtype, scheme, bits, layout):
    shape, groups = LAYOUTS[layout]
    x = sample(dtype, shape, seed=zlib.crc32(f"{dtype}{scheme}{bits}{layout}".encode()))
    q, _ = check_quantize(x, groups, bits, SCHEMES[scheme])
    per = ref.codes_per_byte(bits)
    assert q.shape == shape[:-1] + (shape[-1] // per,)


@pytest.mark.parametrize("layout", ["S1", "S3", "S13", "one_group", "huge_one"])
@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_backend_matches_reference(backend, dtype, scheme, bits, layout):
    """quantize and dequantize on every backend (conftest.backend) against the reference."""
    shape, groups = LAYOUTS[layout]
    x = sample(dtype, shape, seed=zlib.crc32(f"backend{dtype}{scheme}{bits}{layout}".encode()))
    q, params = dsquant.quantize(backend.put(x), groups, bits, symmetric=SCHEMES[scheme])
    exp_q, exp_params = ref.quantize_ref(x, groups, bits, SCHEMES[scheme])
    assert same_bits(backend.get(q).view(np.uint8), exp_q)
    assert same_bits(backend.get(params), exp_params)
    y = dsquant.dequantize(q, params, bits, dtype=dtype)
    assert same_bits(backend.get(y), ref.dequantize_ref(exp_q, exp_params, bits, dtype))


@pytest.mark.parametrize("out_dtype", DTYPES)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("layout", ["S3", "S13", "huge_odd"])
def test_dequantize_matches_reference(layout, bits, scheme, out_dtype):
    shape, groups = LAYOUTS[layout]
    x = sample("float32", shape, seed=zlib.crc32(f"{layout}{bits}{scheme}".encode()))
    q, params = dsquant.quantize(x, groups, bits, symmetric=SCHEMES[scheme])
    y = dsquant.dequantize(q, params, bits, dtype=out_dtype)
    assert y.shape == shape and y.dtype == ref.DTYPES[out_dtype]
    assert same_bits(y, ref.dequantize_ref(q.view(np.uint8), params, bits, out_dtype))


@st.composite
def cases(draw):
    bits = draw(st.integers(2, 8))
    dtype = draw(st.sampled_from(DTYPES))
    per = ref.codes_per_byte(bits)
    shape = tuple(draw(st.lists(st.integers(1, 4), max_size=2))) + (per * draw(st.integers(1, 10)),)
    n = math.prod(shape)
    groups = draw(st.sampled_from([g for g in range(1, n + 1) if n % g == 0]))
    finite = (st.floats(allow_nan=False, allow_infinity=False, width=32) if dtype != "float64"
              else st.floats(-1e300, 1e300))
    values = draw(st.lists(st.one_of(finite, st.sampled_from(SPECIALS), st.just(1e-42), st.just(-3e-39)),
                           min_size=n, max_size=n))
    with np.errstate(over="ignore"):
        x = np.array(values, dtype=np.float64).astype(ref.DTYPES[dtype]).reshape(shape)
    return x, groups, bits, draw(st.booleans()), draw(st.sampled_from(DTYPES))


@given(cases())
def test_property_matches_reference(case):
    x, groups, bits, symmetric, out_dtype = case
    q, params = check_quantize(x, groups, bits, symmetric)
    y = dsquant.dequantize(q, params, bits, dtype=out_dtype)
    assert same_bits(y, ref.dequantize_ref(q.view(np.uint8), params, bits, out_dtype))


# ------------------------------------------------------------------------------ exact tables
# Inputs chosen so that the scale is exactly 1 (absmax = 2^(b-1)), so codes are the values
# themselves (+absmax clipped to 2^(b-1) - 1), written out as bytes by hand.
PACKING = {
    # DeepSpeed's documented example: (3, -2) at 4 bits is the byte 0x3E (high nibble first)
    4: ([3, -2, 8, -8, 0, -1], [0x3E, 0x78, 0x0F]),
    2: ([1, -1, -2, 0, 2, 0, 0, -1], [0b01_11_10_00, 0b01_00_00_11]),
    8: ([127, -128, -1, 5, 128], [0x7F, 0x80, 0xFF, 0x05, 0x7F]),
    3: ([3, -4, -1, 4, 0], [0x03, 0xFC, 0xFF, 0x03, 0x00]),
    6: ([31, -32, -7, 32], [0x1F, 0xE0, 0xF9, 0x1F]),
}


@pytest.mark.parametrize("bits", PACKING)
def test_packing_byte_table(bits):
    values, expected = PACKING[bits]
    q, params = dsquant.quantize(np.array(values, dtype=np.float32), 1, bits)
    assert params.tolist() == [[1.0]]
    assert q.view(np.uint8).tolist() == expected
    back = dsquant.dequantize(np.array(expected, dtype=np.uint8), params, bits)
    assert back.tolist() == [min(v, 2 ** (bits - 1) - 1) for v in values]


def test_packing_crosses_groups_within_a_byte():
    # two groups of two inside one 2-bit byte: [1, 2] has scale 1 -> codes 1, 1 (2 clipped);
    # [-4, 4] has scale 4 / 8 = 0.5 -> codes -2, 1 (2 clipped)
    q, params = dsquant.quantize(np.array([1, 2, -4, 4], dtype=np.float32), 2, 2)
    assert params.tolist() == [[1.0], [2.0]]
    assert q.view(np.uint8).tolist() == [0b01_01_10_01]
    assert dsquant.dequantize(q, params, 2).tolist() == [1.0, 1.0, -4.0, 2.0]


def test_packing_crosses_rows():
    # 4-bit codes pack along the flat order: row boundaries are no byte boundaries for the data,
    # only the last dimension shrinks
    x = np.array([[3, -2], [8, -8]], dtype=np.float32)
    q, _ = dsquant.quantize(x, 1, 4)
    assert q.shape == (2, 1) and q.view(np.uint8).ravel().tolist() == [0x3E, 0x78]


def test_dequantize_hand_written_bytes():
    q = np.array([0x3E, 0x78], dtype=np.uint8)
    y = dsquant.dequantize(q, np.array([[0.5]], dtype=np.float32), 4)
    assert y.tolist() == [1.5, -1.0, 3.5, -4.0]
    # asymmetric: y = fma(q, p0, p1); 2-bit fields 01 11 10 00 = (1, -1, -2, 0)
    y = dsquant.dequantize(np.array([0x78], dtype=np.uint8),
                           np.array([[0.25, 10.0]], dtype=np.float32), 2, dtype="float64")
    assert y.dtype == np.float64 and y.tolist() == [10.25, 9.75, 9.5, 10.0]


def test_special_values_table():
    x = np.array([1.0, np.nan, np.inf, -np.inf, -0.5, 0.0, 0.25, 2.0], dtype=np.float32)
    # symmetric: absmax 2 -> scale 256 / 4 = 64, params 1/64
    q, params = dsquant.quantize(x, 1, 8)
    assert params.tolist() == [[1 / 64]]
    assert q.tolist() == [64, 0, 127, -128, -32, 0, 16, 127]
    # asymmetric: min -0.5, max 2 -> scale f32(256 / 2.5), offset 0.75
    q, params = dsquant.quantize(x, 1, 8, symmetric=False)
    scale = np.float32(256 / 2.5)
    assert params.tolist() == [[float(np.float32(1) / scale), 0.75]]
    assert q.tolist() == [26, 0, 127, -128, -128, -77, -51, 127]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("values", [[0.0] * 4, [np.nan, np.inf, -np.inf, np.nan]], ids=["zeros", "no_finite"])
def test_groups_without_range_are_all_zero_groups(values, scheme):
    q, params = dsquant.quantize(np.array(values, dtype=np.float16), 1, 4, symmetric=SCHEMES[scheme])
    assert params.tolist() == ([[1.0]] if SCHEMES[scheme] else [[1.0, 0.0]])
    codes = ref.unpack_ref(q, 4).tolist()
    assert codes == [0 if not np.isinf(v) else (7 if v > 0 else -8) for v in values]


def test_constant_group_round_trips_exactly():
    x = np.full(8, 5.5, dtype=np.float32)
    q, params = dsquant.quantize(x, 2, 8, symmetric=False)
    assert params.tolist() == [[1.0, 5.5], [1.0, 5.5]] and q.tolist() == [0] * 8
    assert dsquant.dequantize(q, params, 8).tolist() == [5.5] * 8


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtype_extremes(dtype):
    info = ml_dtypes.finfo(ref.DTYPES[dtype])
    x = np.array([info.max, -info.max, info.smallest_subnormal, 0], dtype=ref.DTYPES[dtype])
    for symmetric in (True, False):
        q, params = dsquant.quantize(x, 1, 8, symmetric=symmetric)
        if dtype != "float64":   # float64's max is beyond float32 params (see test_float64_beyond_float32)
            assert same_bits(q.view(np.uint8), ref.quantize_ref(x, 1, 8, symmetric)[0])
            assert same_bits(params, ref.quantize_ref(x, 1, 8, symmetric)[1])
        assert ref.unpack_ref(q, 8).tolist()[:2] == [127, -128]


def test_tiny_groups_saturate_the_scale():
    # absmax 2^-140: 2^7 / 2^-140 overflows float32, so the scale saturates at float32's max
    # instead of becoming Inf (which would turn 0 * scale into NaN)
    x = np.array([2.0 ** -140, 0.0, -(2.0 ** -141), 0.0], dtype=np.float32)
    q, params = dsquant.quantize(x, 1, 8)
    big = np.finfo(np.float32).max
    assert params.tolist() == [[float(np.float32(1) / big)]]
    assert q.tolist() == [int(np.rint(np.float32(x[0]) * big)), 0, int(np.rint(np.float32(x[2]) * big)), 0]


def test_float64_computes_in_double():
    # 1 + 2^-40 and 1 are different doubles but the same float32: the codes see the difference
    x = np.array([1.0 + 2.0 ** -40, 1.0, 1.0, 1.0 + 2.0 ** -40], dtype=np.float64)
    q, params = dsquant.quantize(x, 1, 8, symmetric=False)
    assert q.tolist() == [127, -128, -128, 127]
    assert params.dtype == np.float32 and params[0, 1] == np.float32(1.0)


def test_float64_beyond_float32():
    # params are float32 (DeepSpeed's format): a float64 group beyond float32's range gets params
    # saturated at float32's maximum (finite in, finite out), while its codes are still right
    x = np.array([1e300, -1e300, 5e299, 0.0])
    q, params = dsquant.quantize(x, 1, 8)
    assert q.tolist() == [127, -128, 64, 0]
    assert params[0, 0] == np.finfo(np.float32).max


CANONICAL_NAN = {"float16": 0x7E00, "bfloat16": 0x7FC0, "float32": 0x7FC00000, "float64": 0x7FF8000000000000}


@pytest.mark.parametrize("tier", ["cpu", "cpu-avx2", "cpu-baseline"])
@pytest.mark.parametrize("length", [2, 74])   # per group: shorter than any vector, and vectors plus a tail
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_results_are_the_canonical_nan(request, dtype, length, tier):
    # NaN / infinite params (user data, or float64 groups beyond float32) make NaN values; they
    # are stored as one quiet NaN, whatever the payload, so the CPU and GPU agree bit for bit
    from conftest import CPU_TIERS, _use_isa
    _use_isa(request, CPU_TIERS[tier])
    q = np.resize(np.array([0, 3, -2, 0], dtype=np.int8), 2 * length)
    payload_nan = np.array([0xFFC00123], dtype=np.uint32).view(np.float32)[0]
    params = np.array([[payload_nan], [np.inf]], dtype=np.float32)
    y = dsquant.dequantize(q, params, 8, dtype=dtype)
    bits = y.view(np.dtype(f"u{y.dtype.itemsize}")).tolist()
    nan = CANONICAL_NAN[dtype]
    assert bits[:length] == [nan] * length                                  # NaN params
    assert [b for b, c in zip(bits[length:], q[length:]) if c == 0] == [nan] * int((q[length:] == 0).sum())   # 0 * Inf
    assert np.all(np.isinf(y[length:][q[length:] != 0].astype(np.float64)))


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", BITS)
def test_round_trip_error_is_at_most_one_step(bits, scheme, dtype):
    x = sample(dtype, (64, 96), seed=bits, specials=False)
    q, params = dsquant.quantize(x, 64, bits, symmetric=SCHEMES[scheme])
    y = dsquant.dequantize(q, params, bits, dtype="float64").reshape(64, -1)
    x64 = x.astype(np.float64).reshape(64, -1)
    err = np.abs(y - x64)
    step = params[:, :1].astype(np.float64)
    offset = 0 if SCHEMES[scheme] else params[:, 1:].astype(np.float64)
    slack = np.abs(y) * 2.0 ** -20                   # float32 roundings of the scale and the product
    # rounding leaves half a step, except above the top code's half step (up to the group's
    # maximum, which maps to 2^(b-1)) where codes are clipped to 2^(b-1) - 1: a full step
    assert np.all(err <= step * (1 + 2.0 ** -10) + slack)
    clipped = x64 - offset > step * (2 ** (bits - 1) - 0.5 - 2.0 ** -10)
    assert clipped.any()
    assert np.all((err <= step * (0.5 + 2.0 ** -10) + slack)[~clipped])


@pytest.mark.parametrize("bits", BITS)
def test_grid_values_round_trip_exactly(bits):
    # every multiple of 2^-3 in the code range, absmax = 2^(b-1) * 2^-3: scale is exactly 8
    codes = np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1))
    per = ref.codes_per_byte(bits)
    values = np.concatenate([codes, [2 ** (bits - 1)]])       # the peak, clipped
    values = np.concatenate([values, np.zeros((-values.size) % per)]) / 8
    q, params = dsquant.quantize(values.astype(np.float32), 1, bits)
    assert params.tolist() == [[0.125]]
    y = dsquant.dequantize(q, params, bits)
    expected = np.minimum(values, (2 ** (bits - 1) - 1) / 8)
    assert y.tolist() == expected.tolist()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_thread_count_does_not_change_results(monkeypatch, scheme):
    x = sample("float32", (40001, 4), seed=5)
    outputs = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("DSQUANT_NUM_THREADS", threads)
        q, params = dsquant.quantize(x, 4, 4, symmetric=SCHEMES[scheme])
        outputs.append((q.tobytes(), params.tobytes(), dsquant.dequantize(q, params, 4).tobytes()))
    assert outputs[0] == outputs[1] == outputs[2]


# ------------------------------------------------------------------------------ shapes
def test_zero_d_input():
    q, params = dsquant.quantize(np.array(-3.0, dtype=np.float32), 1, 8)
    assert q.shape == () and q.tolist() == -128 and params.tolist() == [[3 / 128]]
    assert dsquant.dequantize(q, params, 8).shape == ()
    with pytest.raises(ValueError, match="last dimension"):
        dsquant.quantize(np.array(1.0, dtype=np.float32), 1, 4)
    with pytest.raises(ValueError, match="0-d codes"):
        dsquant.dequantize(np.array(3, dtype=np.int8), params, 4)


def test_empty_input():
    q, params = dsquant.quantize(np.zeros((0, 8), dtype=np.float32), 1, 4, symmetric=False)
    assert q.shape == (0, 4) and params.tolist() == [[1.0, 0.0]]
    assert dsquant.dequantize(q, params, 4).shape == (0, 8)


def test_non_contiguous_inputs():
    x = sample("bfloat16", (16, 64), seed=3)
    view = x[:, ::2]
    q, params = check_quantize(view, 8, 4, False)
    exp = ref.dequantize_ref(q.view(np.uint8), params, 4, "float32")
    q_wide = np.zeros((16, 32), dtype=np.int8)
    q_wide[:, ::2] = q
    assert same_bits(dsquant.dequantize(q_wide[:, ::2], params, 4), exp)
    p_wide = np.zeros((8, 4), dtype=np.float32)
    p_wide[:, ::2] = params
    assert same_bits(dsquant.dequantize(q, p_wide[:, ::2], 4), exp)


# ------------------------------------------------------------------------------ interop
def test_torch_in_torch_out():
    x = torch.randn(6, 32, dtype=torch.bfloat16)
    q, params = dsquant.quantize(x, 12, 4, symmetric=False)
    assert isinstance(q, torch.Tensor) and q.dtype == torch.int8 and q.shape == (6, 16)
    assert isinstance(params, torch.Tensor) and params.dtype == torch.float32 and params.shape == (12, 2)
    exp_q, exp_params = ref.quantize_ref(x.view(torch.uint16).numpy().view(ref.BF16), 12, 4, False)
    assert same_bits(q.numpy().view(np.uint8), exp_q)
    assert same_bits(params.numpy(), exp_params)
    y = dsquant.dequantize(q, params, 4, dtype=torch.float16)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float16 and y.shape == (6, 32)
    assert same_bits(y.numpy(), ref.dequantize_ref(exp_q, exp_params, 4, "float16"))
    y = dsquant.dequantize(q, params, 4, dtype=torch.bfloat16)
    assert y.dtype == torch.bfloat16


def test_jax_in_jax_out():
    x = jnp.linspace(-1, 1, 64, dtype=jnp.float32)
    q, params = dsquant.quantize(x, 4, 8)
    assert "jax" in type(q).__module__ and q.dtype == jnp.int8 and params.dtype == jnp.float32
    assert same_bits(np.asarray(q).view(np.uint8), ref.quantize_ref(np.asarray(x), 4, 8, True)[0])
    y = dsquant.dequantize(q, params, 8, dtype=jnp.bfloat16)
    assert "jax" in type(y).__module__ and y.dtype == jnp.bfloat16


def test_numpy_bfloat16_output():
    q, params = dsquant.quantize(np.linspace(-1, 1, 16, dtype=np.float32), 2, 8)
    y = dsquant.dequantize(q, params, 8, dtype="bfloat16")
    assert y.dtype == ref.BF16
    assert same_bits(y, ref.dequantize_ref(q.view(np.uint8), params, 8, "bfloat16"))


@pytest.mark.parametrize("spelling", ["float16", np.float16, np.dtype("float16"), torch.float16, jnp.float16],
                         ids=["str", "numpy_type", "numpy_dtype", "torch", "jax"])
def test_dtype_spellings(spelling):
    q, params = dsquant.quantize(np.ones(4, dtype=np.float32), 1, 8)
    assert dsquant.dequantize(q, params, 8, dtype=spelling).dtype == np.float16


def test_out_argument():
    q, params = dsquant.quantize(np.linspace(-1, 1, 32, dtype=np.float32).reshape(4, 8), 4, 4)
    out = np.empty((4, 16), dtype=np.float16)[:, ::2]           # non-contiguous destination
    res = dsquant.dequantize(q, params, 4, out=out)
    assert res is out
    assert same_bits(out, ref.dequantize_ref(q.view(np.uint8), params, 4, "float16"))
    t_out = torch.empty(4, 8, dtype=torch.float64)
    tq, tp = torch.from_numpy(q), torch.from_numpy(params)
    assert dsquant.dequantize(tq, tp, 4, out=t_out) is t_out
    assert same_bits(t_out.numpy(), ref.dequantize_ref(q.view(np.uint8), params, 4, "float64"))


# ------------------------------------------------------------------------------ errors
X = np.ones((4, 8), dtype=np.float32)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(bits=1), ValueError, "bits must be in 2..8"),
    (dict(bits=9), ValueError, "bits must be in 2..8"),
    (dict(bits=4.0), TypeError, "bits must be an integer"),
    (dict(bits=True), TypeError, "bits must be an integer"),
    (dict(groups=0), ValueError, "positive"),
    (dict(groups=5), ValueError, "does not divide"),
    (dict(groups="2"), TypeError, "groups must be an integer"),
    (dict(symmetric=1), TypeError, "symmetric must be True or False"),
], ids=["bits1", "bits9", "bits_float", "bits_bool", "groups0", "groups5", "groups_str", "symmetric_int"])
def test_quantize_argument_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        dsquant.quantize(X, **kwargs)


def test_quantize_input_errors():
    with pytest.raises(TypeError, match="dtype int32"):
        dsquant.quantize(np.ones(4, dtype=np.int32))
    with pytest.raises(TypeError, match="must be an array"):
        dsquant.quantize([1.0, 2.0])
    with pytest.raises(ValueError, match="not a multiple of 4"):
        dsquant.quantize(np.ones((4, 6), dtype=np.float32), 1, 2)


Q, P = dsquant.quantize(X, 4, 4, symmetric=False)


@pytest.mark.parametrize("args,kwargs,exc,match", [
    ((X, P, 4), {}, TypeError, "q has dtype float32"),
    ((Q, P.astype(np.float64), 4), {}, TypeError, "params has dtype float64"),
    ((Q, P.reshape(-1), 4), {}, ValueError, r"\[groups, 1\]"),
    ((Q, np.ones((4, 3), np.float32), 4), {}, ValueError, r"\[groups, 2\]"),
    ((Q, np.ones((3, 1), np.float32), 4), {}, ValueError, "does not divide"),
    ((Q, np.ones((0, 1), np.float32), 4), {}, ValueError, "positive"),
    ((Q, P, 9), {}, ValueError, "bits must be in 2..8"),
    ((Q, torch.from_numpy(P), 4), {}, TypeError, "params is a torch array but q is a numpy array"),
    ((Q, P, 4), dict(dtype="int8"), TypeError, "dtype must be one of"),
    ((Q, P, 4), dict(dtype="float"), TypeError, "dtype must be one of"),
    ((Q, P, 4), dict(out=np.empty((4, 4), np.float32)), ValueError, "out has shape"),
    ((Q, P, 4), dict(out=np.empty((4, 8), np.float32), dtype="float16"), TypeError, "out has dtype float32"),
    ((Q, P, 4), dict(out=np.empty((4, 8), np.int32)), TypeError, "out has dtype int32"),
    ((Q, P, 4), dict(out=torch.empty(4, 8)), TypeError, "out is a torch array"),
], ids=["q_float", "params_f64", "params_1d", "params_3cols", "groups_not_dividing", "zero_groups", "bits9",
        "mixed_frameworks", "dtype_int8", "dtype_ambiguous", "out_shape", "out_vs_dtype", "out_int",
        "out_framework"])
def test_dequantize_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        dsquant.dequantize(*args, **kwargs)


def test_dequantize_refuses_read_only_out():
    out = np.empty((4, 8), np.float32)
    out.flags.writeable = False
    with pytest.raises(BufferError, match="read-only"):
        dsquant.dequantize(Q, P, 4, out=out)


# ------------------------------------------------------------------------------ device compile check
INT_PROBE = b"""
#include "dsq_math.cuh"
namespace dsq {
// Every integer-format function of dsq_math.cuh, instantiated for one element format.
template <class Fmt>
__global__ void int_probe(const typename Fmt::storage* x, unsigned char* q, float* params,
                          typename Fmt::storage* y, unsigned short* h, int n, int bits, int symmetric) {
  typedef typename Fmt::compute C;
  Stats<Fmt> st = stats_empty<Fmt>();
  for (int i = threadIdx.x; i < n; i += blockDim.x) stats_add(st, x[i]);
  IntParams<C> p = int_params(st, bits, symmetric != 0);
  params[0] = p.p0;
  params[1] = p.p1;
  const int per = int_codes_per_byte(bits);
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    q[i] = (unsigned char)code_to_field(int_code<Fmt>(x[i], p), per, i % per);
    y[i] = int_dequant_element<Fmt>(field_signed(q[i], per, i % per), p.p0, p.p1, symmetric != 0);
    h[i] = uint_dequant_half(field_unsigned(q[i], per, i % per), h[0], h[1]);
  }
}
}  // namespace dsq
"""


@pytest.mark.parametrize("target", ["sm_80", "sm_90"])
def test_integer_math_compiles_for_the_device(target):
    """The integer-format functions of cuda/dsq_math.cuh compile with NVRTC under the CUDA
    backend's pinned options (no GPU needed; cuda-bindings is a test dependency, as for
    tests/test_cuda_compile.py)."""
    from dsquant.backends.cuda import kernels as _kernels
    names = [f"dsq::int_probe<dsq::{fmt}>" for fmt in ("F16", "BF16", "F32", "F64")]
    image, lowered, _ = _kernels._compile(_kernels._nvrtc(), "int_probe.cu", INT_PROBE, names,
                                          _kernels.options_for(target), target)
    assert image and sorted(lowered) == sorted(names)


# ------------------------------------------------------------------------------ GPU parity
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_gpu_matches_cpu(layout, bits, scheme, dtype):
    """CuPy arrays (torch CUDA tensors for bfloat16, which CuPy lacks) give the CPU path's bytes."""
    import cupy
    shape, groups = LAYOUTS[layout]
    x = sample(dtype, shape, seed=zlib.crc32(f"gpu{dtype}{scheme}{bits}{layout}".encode()))
    if dtype == "bfloat16":
        device = torch.from_numpy(x.view(np.uint16)).view(torch.bfloat16).cuda()
        to_host = lambda a: a.cpu().numpy()                                     # noqa: E731 - the other branch binds a function
    else:
        device, to_host = cupy.asarray(x), cupy.asnumpy
    q, params = dsquant.quantize(device, groups, bits, symmetric=SCHEMES[scheme])
    assert type(q) is type(device) and type(params) is type(device)
    q_cpu, params_cpu = dsquant.quantize(x, groups, bits, symmetric=SCHEMES[scheme])
    assert same_bits(to_host(q).view(np.uint8), q_cpu.view(np.uint8))
    assert same_bits(to_host(params), params_cpu)
    for out_dtype in ("float16", "float32", "float64"):
        y = dsquant.dequantize(q, params, bits, dtype=out_dtype)
        assert type(y) is type(device)
        assert same_bits(to_host(y), dsquant.dequantize(q_cpu, params_cpu, bits, dtype=out_dtype))
