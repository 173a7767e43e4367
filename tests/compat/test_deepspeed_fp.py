"""dsquant.compat.deepspeed_fp without DeepSpeed: the extension's functions on every backend and
FP_Quantize on NumPy, torch and JAX, against tests/reference_fp_ds.py."""
import ml_dtypes
import numpy as np
import pytest
import reference_fp_ds as ref
from hypothesis import given
from hypothesis import strategies as st

from dsquant.compat import deepspeed_fp

FORMATS = [(8, 3), (8, 2), (12, 7), (6, 2), (4, 1)]


@pytest.mark.parametrize("q_bits,m", FORMATS)
def test_module_functions_on_every_backend(backend, q_bits, m):
    group_size = 16
    x = np.random.default_rng(q_bits + m).standard_normal((3, 32)).astype(np.float16)
    out = backend.put(np.ones((6, group_size * q_bits // 8 + 4), np.uint8))
    # DeepSpeed's wrapper passes q_mantisa_bits 4 for 12 bits; its kernel runs E4M7
    ops = deepspeed_fp.DEEPSPEED
    assert ops.quantize(out, backend.put(x), group_size, 0, q_bits, 4 if q_bits == 12 else m) is out
    want = ref.quantize_records(x.reshape(-1), group_size, q_bits, m)
    np.testing.assert_array_equal(backend.get(out), want)
    val = backend.put(np.zeros((3, 32), np.float32))
    m_ds = 4 if q_bits == 12 else m
    ops.dequantize(val, out, group_size, m_ds, q_bits - m_ds - 1)
    codes, scales = ref.unpack_records(want, group_size, q_bits)
    np.testing.assert_array_equal(backend.get(val).reshape(-1), ref.decode(codes, scales, group_size, q_bits, m,
                                                                        np.float32))
    part = backend.put(np.zeros((2, 32), np.float32))
    ops.selective_dequantize(part, out, backend.put(np.array([2, 0], np.int32)), group_size, m_ds, q_bits - m_ds - 1)
    np.testing.assert_array_equal(backend.get(part), backend.get(val)[[2, 0]])


def test_get_scales_is_a_view_of_numpy_memory():
    scale = np.zeros((3, 4), np.uint8)
    view = deepspeed_fp.get_scales(scale, 3)
    assert view.shape == (3, 1) and view.dtype == np.float32
    view[1, 0] = 2.0                                    # writes through to the scale bytes
    np.testing.assert_array_equal(scale[1], np.frombuffer(np.float32(2.0).tobytes(), np.uint8))


def test_fp_quantize_on_torch_and_jax():
    torch = pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    x = np.random.default_rng(1).standard_normal((2, 4, 16)).astype(np.float32)
    want = ref.quantize_records(x.reshape(-1), 32, 8, 3)
    for arr in (torch.from_numpy(x), jax.numpy.asarray(x)):
        q = deepspeed_fp.FP_Quantize(group_size=32, compat=True)
        data, scale = q.quantize(arr, return_meta_tensor=True)
        assert type(data) is type(arr) and tuple(data.shape) == x.shape
        np.testing.assert_array_equal(np.asarray(data).reshape(4, 32), want[:, :32])
        scales = q.get_scales()
        assert type(scales) is type(arr)
        np.testing.assert_array_equal(np.asarray(scales).reshape(-1), want[:, 32:].copy().view("<f4").reshape(-1))
        y = q.dequantize(data, scale=scale)
        assert type(y) is type(arr) and y.dtype == arr.dtype and tuple(y.shape) == x.shape
        np.testing.assert_array_equal(np.asarray(y), np.asarray(q.dequantize(q.quantize(arr))))


def test_one_object_serves_several_tensors():
    """DeepSpeed's wrapper decodes with the last quantize's shape and dtype; shape=/dtype= override it."""
    q = deepspeed_fp.FP_Quantize(group_size=8, compat=True)
    a = np.arange(16, dtype=np.float32).reshape(2, 8)
    b = np.ones(24, ml_dtypes.bfloat16)
    ra, rb = q.quantize(a), q.quantize(b)
    assert q.dequantize(rb).dtype == ml_dtypes.bfloat16 and q.dequantize(rb).shape == (24,)
    ya = q.dequantize(ra, shape=(2, 8), dtype="float32")
    np.testing.assert_array_equal(ya, ref.decode(*ref.unpack_records(ra, 8, 8), 8, 8, 3, np.float32).reshape(2, 8))


def test_errors_name_what_would_work():
    q = deepspeed_fp.FP_Quantize(group_size=8)
    with pytest.raises(RuntimeError, match="quantize before"):
        q.dequantize(np.zeros((1, 12), np.uint8))
    with pytest.raises(RuntimeError, match="return_meta_tensor"):
        q.get_scales()
    x = np.zeros(16, np.float32)
    records = q.quantize(x)
    with pytest.raises(ValueError, match="3-D"):
        q.selective_dequantize(records, np.array([0], np.int32))
    with pytest.raises(ValueError, match="36 bytes"):
        deepspeed_fp.quantize(np.ones((2, 12), np.uint8), np.zeros(24, np.float32), 8, False, 8, 3)
    ro = np.ones((2, 12), np.uint8)
    ro.flags.writeable = False
    with pytest.raises(BufferError, match="read-only"):
        deepspeed_fp.quantize(ro, x, 8, False, 8, 3)
    with pytest.raises(TypeError, match="indexes has dtype float32"):
        deepspeed_fp.selective_dequantize(np.zeros(8, np.float32), np.zeros((2, 12), np.uint8),
                                          np.zeros(1, np.float32), 8, 3, 4)


@given(groups=st.integers(1, 6), units=st.integers(1, 40), fmt=st.sampled_from(FORMATS),
       scale=st.sampled_from([1e-3, 1.0, 300.0, 6e4]), seed=st.integers(0, 2 ** 32 - 1),
       dtype=st.sampled_from([np.float16, ml_dtypes.bfloat16, np.float32, np.float64]))
def test_random_shapes_and_values(groups, units, fmt, scale, seed, dtype):
    q_bits, m = fmt
    group_size = units * {8: 1, 4: 2, 6: 4, 12: 2}[q_bits]
    rng = np.random.default_rng(seed)
    with np.errstate(over="ignore"):                # float16 beyond 65504: Inf elements, a case too
        x = (rng.standard_normal(groups * group_size) * scale).astype(dtype)
    x[rng.integers(0, x.size, 3)] = 0
    out = np.ones((groups, group_size * q_bits // 8 + 4), np.uint8)
    deepspeed_fp.DEEPSPEED.quantize(out, x, group_size, False, q_bits, m)
    np.testing.assert_array_equal(out, ref.quantize_records(x, group_size, q_bits, m))
    if q_bits != 12:                                 # the default mode: OCP codes
        deepspeed_fp.quantize(out, x, group_size, False, q_bits, m)
        np.testing.assert_array_equal(out, ref.ocp_quantize_records(x, group_size, q_bits, m))
