"""Interop: results come back in the caller's framework (NumPy, torch, JAX, other DLPack
producers), zero-copy, in place where asked; importing dsquant imports no framework."""
import subprocess
import sys

import numpy as np
import pytest
import torch

import dsquant
import reference as ref
from _optional import require
from helpers import check_exact

jax = require("jax")
jnp = require("jax.numpy")
ml_dtypes = require("ml_dtypes")


def test_import_loads_no_framework():
    code = ("import sys, dsquant, numpy as np; dsquant.fake_quantize(np.ones(4, np.float32)); dsquant.info();"
            "bad = [m for m in ('torch', 'jax', 'jaxlib', 'cupy') if m in sys.modules]; print(bad); "
            "sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------- NumPy
def test_numpy_in_numpy_out():
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    y = dsquant.fake_quantize(x, 4, 4)
    assert type(y) is np.ndarray and y.shape == (4, 6) and y.dtype == np.float32
    assert y.ctypes.data % 64 == 0          # library-owned, 64-byte-aligned buffer
    y[0, 0] = 5                              # writable, owned by the caller now
    check_exact(dsquant.fake_quantize(x, 4, 4), ref.fake_quantize(x, 4, 4))


def test_numpy_bfloat16():
    x = np.random.default_rng(1).standard_normal(64).astype(ml_dtypes.bfloat16)
    y = dsquant.fake_quantize(x, 8, 4)
    assert y.dtype == ml_dtypes.bfloat16
    check_exact(y, ref.fake_quantize(x, 8, 4))
    dsquant.ds_quantizer(x, 8, 4)
    check_exact(x, y)


@pytest.mark.parametrize("view", ["transpose", "step", "fortran", "negative"])
def test_numpy_non_contiguous_inputs(view):
    base = np.random.default_rng(2).standard_normal((12, 10)).astype(np.float32)
    x = {"transpose": base.T, "step": base[::2, ::3], "fortran": np.asfortranarray(base),
         "negative": base[::-1, ::-2]}[view]
    expected = ref.fake_quantize(np.ascontiguousarray(x), 2, 4)
    check_exact(dsquant.fake_quantize(x, 2, 4), expected)
    if view == "negative":
        return   # in place refuses negative strides (tested in test_fake_quantize)
    snapshot = base.copy()
    assert dsquant.ds_quantizer(x, 2, 4) is x
    check_exact(np.ascontiguousarray(x), expected)
    if view == "step":   # elements outside the view are untouched
        outside = np.ones(base.shape, bool)
        outside[::2, ::3] = False
        assert np.array_equal(base[outside], snapshot[outside])


def test_out_argument_numpy():
    x = np.random.default_rng(3).standard_normal(30).astype(np.float16)
    out = np.empty_like(x)
    assert dsquant.fake_quantize(x, 3, 4, out=out) is out
    check_exact(out, ref.fake_quantize(x, 3, 4))
    # non-contiguous out
    big = np.zeros(60, np.float16)
    assert dsquant.fake_quantize(x, 3, 4, out=big[::2]) is not None
    check_exact(big[::2], ref.fake_quantize(x, 3, 4))
    assert np.all(big[1::2] == 0)
    # out aliasing the input is in-place
    y = x.copy()
    dsquant.fake_quantize(y, 3, 4, out=y)
    check_exact(y, ref.fake_quantize(x, 3, 4))


@pytest.mark.parametrize("bad,exc,match", [
    (np.empty(31, np.float16), ValueError, "shape"),
    (np.empty(30, np.float32), TypeError, "dtype"),
    (torch.empty(30, dtype=torch.float16), TypeError, "framework"),
    ("nope", TypeError, "must be an array"),
])
def test_out_argument_errors(bad, exc, match):
    x = np.zeros(30, np.float16)
    with pytest.raises(exc, match=match):
        dsquant.fake_quantize(x, out=bad)


def test_out_read_only_is_refused():
    out = np.empty(8, np.float32)
    out.setflags(write=False)
    with pytest.raises(BufferError, match="read-only"):
        dsquant.fake_quantize(np.ones(8, np.float32), out=out)



def test_numpy_results_are_writable_and_round_trip():
    # NumPy before 2.3 marks arrays imported through DLPack read-only, and before 2.1 cannot export
    # a read-only array: .ci/run runs this file once on the NumPy floor of pyproject.toml
    x = np.random.default_rng(2).standard_normal(256).astype(np.float32)
    q, params = dsquant.quantize(x, 8, 4)
    sq, sp = dsquant.swizzle_quantize(x, 8, 4, nodes=2, devices_per_node=2)
    results = [dsquant.fake_quantize(x, 8, 4), q, params, sq, sp, dsquant.dequantize(q, params, 4)]
    assert all(r.flags.writeable for r in results)
    check_exact(dsquant.dequantize(*dsquant.quantize(x, 8, 4), 4), results[-1])   # a read-only q once broke this
    r, rp = dsquant.quantized_reduction(sq, sp, 8, 4, 4, devices_per_node=2)
    assert r.flags.writeable and rp.flags.writeable


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_numpy_read_only_input(dtype):
    x = np.random.default_rng(3).standard_normal(64).astype(dtype)
    expected = dsquant.fake_quantize(x, 8, 4)
    x.setflags(write=False)
    y = dsquant.fake_quantize(x, 8, 4)
    check_exact(y, expected)
    assert y.flags.writeable and not x.flags.writeable
    with pytest.raises(BufferError, match="read-only"):
        dsquant.ds_quantizer(x, 8, 4)

# ------------------------------------------------------------------------------------- torch
TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "float64": torch.float64}


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
def test_torch_in_torch_out(dtype):
    t = torch.randn(8, 16, dtype=TORCH_DTYPES[dtype])
    y = dsquant.fake_quantize(t, 8, 4, symmetric=False)
    assert isinstance(y, torch.Tensor) and y.dtype == t.dtype and y.shape == t.shape and y.device == t.device
    x_np = t.view(torch.int16).numpy().view(ref.DTYPES[dtype]) if t.element_size() == 2 else t.numpy()
    expected = ref.fake_quantize(x_np, 8, 4, symmetric=False)
    got_np = y.view(torch.int16).numpy().view(ref.DTYPES[dtype]) if t.element_size() == 2 else y.numpy()
    check_exact(got_np, expected)


def test_torch_in_place_modifies_tensor_and_parameters():
    t = torch.randn(64)
    expected = ref.fake_quantize(t.numpy().copy(), 4, 8)
    assert dsquant.ds_quantizer(t, 4, 8) is t
    check_exact(t.numpy(), expected)
    # a parameter that requires grad: its .data, or under no_grad (torch's in-place rule;
    # tests/interop/test_torch_ops.py checks the refusal)
    p = torch.nn.Parameter(torch.randn(32))
    expected = ref.fake_quantize(p.detach().numpy().copy(), 2, 4)
    dsquant.ds_quantizer(p.data, 2, 4)
    check_exact(p.detach().numpy(), expected)
    expected = ref.fake_quantize(p.detach().numpy().copy(), 4, 4)
    with torch.no_grad():
        dsquant.ds_quantizer(p, 4, 4)
    check_exact(p.detach().numpy(), expected)
    # non-contiguous tensor view, in place
    base = torch.randn(6, 8)
    view = base.t()
    expected = ref.fake_quantize(view.contiguous().numpy(), 3, 4)
    dsquant.ds_quantizer(view, 3, 4)
    check_exact(view.contiguous().numpy(), expected)


def test_torch_zero_stride_in_place_refused():
    with pytest.raises(BufferError, match="fake_quantize"):
        dsquant.ds_quantizer(torch.ones(1).expand(8))


def test_torch_result_outlives_everything():
    y = dsquant.fake_quantize(torch.arange(16, dtype=torch.float32), 2, 8)
    import gc
    gc.collect()
    assert torch.isfinite(y).all() and y.sum() > 0


def test_cross_check_torch_fake_quantize_per_channel_affine():
    """Symmetric nearest rounding agrees with torch's per-channel fake quantization given the same
    step r = f32(1/s) per group. torch rounds x / r where dsquant rounds x * s, so a value that
    lands within an ulp of a rounding tie may take the neighbouring code; nothing else differs."""
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, (4, 256)).astype(np.float32)
    got = dsquant.fake_quantize(x, 4, 8)
    absmax = np.abs(x).max(axis=1).astype(np.float64)
    s = (256 / (2 * absmax + 1e-5)).astype(np.float32)
    r = np.float32(1) / s
    expected = torch.fake_quantize_per_channel_affine(
        torch.from_numpy(x), torch.from_numpy(r), torch.zeros(4, dtype=torch.int32), 0, -128, 127).numpy()
    diff = np.abs(got - expected)
    assert np.all(diff <= r[:, None] * 1.0001)
    assert (diff == 0).mean() > 0.99


# ------------------------------------------------------------------------------------- JAX
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_jax_in_jax_out(dtype):
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 8), dtype=getattr(jnp, dtype))
    y = dsquant.fake_quantize(x, 4, 4, stochastic=True, seed=3)
    assert isinstance(y, jax.Array) and y.dtype == x.dtype and y.shape == x.shape
    check_exact(np.asarray(y), ref.fake_quantize(np.asarray(x), 4, 4, stochastic=True, seed=3))


def test_jax_in_place_refused():
    with pytest.raises(BufferError, match="fake_quantize"):
        dsquant.ds_quantizer(jnp.ones(8))


def test_old_jax_refuses_traced_calls(monkeypatch):
    """With a jax older than the XLA FFI handlers need (simulated where this one is new enough),
    eager JAX arrays still work (through DLPack) and a traced call says what is needed."""
    from dsquant.interop import adapters
    monkeypatch.setattr(adapters.JAX, "_ffi_ok", False)
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 8), dtype=jnp.float32)
    y = dsquant.fake_quantize(x, 4, 4)
    assert isinstance(y, jax.Array)
    check_exact(np.asarray(y), ref.fake_quantize(np.asarray(x), 4, 4))
    with pytest.raises(NotImplementedError, match="needs jax >="):
        jax.jit(lambda a: dsquant.fake_quantize(a, 4, 4))(x)
    with pytest.raises(BufferError, match="fake_quantize"):
        dsquant.ds_quantizer(jnp.ones(8))


# ------------------------------------------------------------------------------------- others
class Producer:
    """A minimal third-party DLPack producer (legacy protocol only)."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, stream=None):
        return self.array.__dlpack__()

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


def test_other_dlpack_producer_gets_numpy():
    x = np.linspace(-1, 1, 20, dtype=np.float32)
    y = dsquant.fake_quantize(Producer(x), 2, 4)
    assert type(y) is np.ndarray
    check_exact(y, ref.fake_quantize(x, 2, 4))
    # in place through the producer's memory
    dsquant.ds_quantizer(Producer(x), 2, 4)
    check_exact(x, y)


def test_info_reports_frameworks_and_backends():
    info = dsquant.info()
    assert info["version"] == dsquant.__version__
    assert info["cpu_threads"] >= 1
    assert info["frameworks"]["numpy"] == np.__version__
    assert info["frameworks"]["torch"] is not None and info["frameworks"]["jax"] is not None
    assert info["backends"]["cpu"] is True
