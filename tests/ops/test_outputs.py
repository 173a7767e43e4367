"""``out=`` of quantize (codes and params), and the checks every ``out=`` gets: shape, dtype,
framework, writability, and no memory shared with an input or another output."""
import numpy as np
import pytest

import dsquant
import reference_int as ref
from helpers import same_bits

SHAPE, GROUPS = (6, 16), 12


def _x(dtype=np.float32):
    return np.random.default_rng(3).standard_normal(SHAPE).astype(dtype)


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_quantize_into_out(backend, symmetric, bits, layout):
    x = _x()
    exp_q, exp_params = ref.quantize_ref(x, GROUPS, bits, symmetric)
    per = ref.codes_per_byte(bits)
    q_shape, p_shape = (SHAPE[0], SHAPE[1] // per), (GROUPS, 1 if symmetric else 2)
    if layout == "contiguous":
        q_host, p_host = np.zeros(q_shape, np.int8), np.zeros(p_shape, np.float32)
        q_out, p_out = backend.put(q_host), backend.put(p_host)
    else:                                     # every other column of wider arrays
        q_out = backend.put(np.zeros((q_shape[0], 2 * q_shape[1]), np.int8))[:, ::2]
        p_out = backend.put(np.zeros((p_shape[0], 2 * p_shape[1]), np.float32))[:, ::2]
    q, params = dsquant.quantize(backend.put(x), GROUPS, bits, symmetric=symmetric, out=(q_out, p_out))
    assert q is q_out and params is p_out
    assert same_bits(np.ascontiguousarray(backend.get(q)).view(np.uint8), exp_q)
    assert same_bits(np.ascontiguousarray(backend.get(params)), exp_params)


def test_quantize_out_uint8_codes():
    x = _x()
    q = np.zeros(SHAPE, np.uint8)
    p = np.zeros((GROUPS, 1), np.float32)
    dsquant.quantize(x, GROUPS, 8, out=(q, p))
    exp_q, exp_params = ref.quantize_ref(x, GROUPS, 8, True)
    assert same_bits(q, exp_q) and same_bits(p, exp_params)


def test_quantize_out_torch():
    torch = pytest.importorskip("torch")
    x = _x()
    q, p = torch.zeros(SHAPE, dtype=torch.int8), torch.zeros((GROUPS, 2))
    got = dsquant.quantize(torch.from_numpy(x), GROUPS, 8, symmetric=False, out=(q, p))
    assert got[0] is q and got[1] is p
    exp_q, exp_params = ref.quantize_ref(x, GROUPS, 8, False)
    assert same_bits(q.numpy().view(np.uint8), exp_q) and same_bits(p.numpy(), exp_params)


def _outs(q_shape=SHAPE, p_shape=(GROUPS, 1), q_dtype=np.int8, p_dtype=np.float32):
    return np.zeros(q_shape, q_dtype), np.zeros(p_shape, p_dtype)


@pytest.mark.parametrize("out,error,message", [
    (lambda: _outs()[0], TypeError, "out must be a tuple (out[0] (codes), out[1] (params)) of 2 arrays"),
    (lambda: _outs()[:1], TypeError, "of 2 arrays, got tuple of 1"),
    (lambda: _outs(q_dtype=np.int16), TypeError, "out[0] (codes) has dtype int16; expected int8 or uint8"),
    (lambda: _outs(p_dtype=np.float64), TypeError, "out[1] (params) has dtype float64; expected float32"),
    (lambda: _outs(q_shape=(6, 8)), ValueError, "out[0] (codes) has shape (6, 8) but the result has shape (6, 16)"),
    (lambda: _outs(p_shape=(GROUPS, 2)), ValueError,
     "out[1] (params) has shape (12, 2) but the result has shape (12, 1)"),
    (lambda: (_outs()[0], [1.0]), TypeError, "out[1] (params) must be an array"),
], ids=["not_a_tuple", "one_array", "q_dtype", "p_dtype", "q_shape", "p_shape", "p_not_array"])
def test_quantize_out_refused(out, error, message):
    with pytest.raises(error) as info:
        dsquant.quantize(_x(), GROUPS, 8, out=out())
    assert message in str(info.value)


def test_quantize_out_read_only_refused():
    q, p = _outs()
    p.flags.writeable = False
    with pytest.raises(BufferError, match="out\\[1\\] \\(params\\) is read-only"):
        dsquant.quantize(_x(), GROUPS, 8, out=(q, p))


def test_quantize_out_of_another_framework_refused():
    torch = pytest.importorskip("torch")
    q, p = _outs()
    with pytest.raises(TypeError, match="out\\[1\\] \\(params\\) is a torch array but x is a numpy array"):
        dsquant.quantize(_x(), GROUPS, 8, out=(q, torch.from_numpy(p)))


def test_quantize_out_sharing_memory_refused():
    x = _x()
    block = np.zeros(SHAPE[0] * SHAPE[1] + GROUPS * 4, np.uint8)
    q = block[:SHAPE[0] * SHAPE[1]].reshape(SHAPE).view(np.int8)
    p_overlapping = block[-GROUPS * 4 - 4:-4].view(np.float32).reshape(GROUPS, 1)
    with pytest.raises(BufferError, match="out\\[0\\] \\(codes\\) and out\\[1\\] \\(params\\) share memory"):
        dsquant.quantize(x, GROUPS, 8, out=(q, p_overlapping))
    p_in_x = x.reshape(-1)[:GROUPS].reshape(GROUPS, 1)
    with pytest.raises(BufferError, match="x and out\\[1\\] \\(params\\) share memory"):
        dsquant.quantize(x, GROUPS, 8, out=(q, p_in_x))
    # apart: accepted, and the right values
    p = block[-GROUPS * 4:].view(np.float32).reshape(GROUPS, 1)
    dsquant.quantize(x, GROUPS, 8, out=(q, p))
    exp_q, exp_params = ref.quantize_ref(x, GROUPS, 8, True)
    assert same_bits(q.view(np.uint8), exp_q) and same_bits(p, exp_params)


def test_fake_quantize_out_may_be_the_input_but_not_overlap_it():
    from reference import fake_quantize as fake_ref
    x = np.random.default_rng(4).standard_normal(65).astype(np.float32)
    expected = fake_ref(x[:64], 4, 8)
    with pytest.raises(BufferError, match="x and out share memory.*only exactly the same array is allowed"):
        dsquant.fake_quantize(x[:64], 4, out=x[1:])
    y = x[:64].copy()
    assert dsquant.fake_quantize(y, 4, out=y) is y      # exactly the input: in place
    assert same_bits(y, expected)


def test_dequantize_out_sharing_memory_refused():
    x = _x()
    q, p = dsquant.quantize(x, GROUPS, 8)
    params_block = np.zeros(GROUPS + SHAPE[0] * SHAPE[1], np.float32)
    params_block[:GROUPS] = p[:, 0]
    p_view = params_block[:GROUPS].reshape(GROUPS, 1)
    out = params_block[GROUPS - 1:GROUPS - 1 + SHAPE[0] * SHAPE[1]].reshape(SHAPE)
    with pytest.raises(BufferError, match="params and out share memory"):
        dsquant.dequantize(q, p_view, 8, out=out)


@pytest.mark.parametrize("fmt, scaling", [("e4m3", "absmax"), ("e2m1", "mx"), ("e2m1", "nvfp4")])
def test_fp_dequantize_out_sharing_memory_refused(fmt, scaling):
    """fp_dequantize's out= may not overlap the codes or any of the scales (the decode would
    overwrite them while it reads them)."""
    x = np.linspace(-3, 3, 256, dtype=np.float32)
    codes, scales = dsquant.fp_quantize(x, 16 if scaling == "nvfp4" else 32, fmt, scaling=scaling)
    block = np.zeros(codes.nbytes + x.nbytes, np.uint8)        # codes, then room for the values
    block[:codes.nbytes] = codes.ravel()
    in_block = block[:codes.nbytes].reshape(codes.shape)
    with pytest.raises(BufferError, match="codes and out share memory"):
        dsquant.fp_dequantize(in_block, scales, fmt, scaling=scaling, out=block[4:4 + x.nbytes].view(np.float32))
    floats = np.zeros(x.size + 8, np.float32)                  # float32 scales, then the values
    if scaling == "absmax":
        floats[:scales.size] = scales
        with pytest.raises(BufferError, match="scales and out share memory"):
            dsquant.fp_dequantize(codes, floats[:scales.size], fmt, out=floats[scales.size - 1:][:x.size])
    if scaling == "nvfp4":
        floats[0] = scales[1][0]
        with pytest.raises(BufferError, match=r"scales\[1\] and out share memory"):
            dsquant.fp_dequantize(codes, (scales[0], floats[:1]), fmt, scaling=scaling, out=floats[:x.size])
