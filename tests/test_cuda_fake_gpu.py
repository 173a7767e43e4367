"""The CUDA backend's Python code (dsquant/_cuda.py, dsquant/_gpu_bench.py) run end to end without
a GPU: CuPy replaced by tests/_fake_cupy.py (host memory that says it is on CUDA device 0), the
compiled kernels' lowered names from a real NVRTC compile, the kernels themselves run by the CPU
emulation. Results must be the CPU path's bits for every layout the backend handles."""
import os
import sys

import numpy as np
import pytest

import dsquant
import reference as ref
import _fake_cupy
from _cuda_emu import Emulator

DTYPES = ["float16", "float32", "float64"]       # CuPy has no bfloat16


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    return Emulator(tmp_path_factory.mktemp("emu-backend"))


@pytest.fixture(scope="module")
def kernel_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("kernel-cache-backend")
    saved = os.environ.get("DSQUANT_CACHE_DIR")
    os.environ["DSQUANT_CACHE_DIR"] = str(path)
    yield path
    if saved is None:
        del os.environ["DSQUANT_CACHE_DIR"]
    else:
        os.environ["DSQUANT_CACHE_DIR"] = saved


@pytest.fixture
def cp(monkeypatch, emu, kernel_cache):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy.module(emu))
    yield sys.modules["cupy"]
    sys.modules.pop("dsquant._cuda", None)          # the next import sees the real (absent) CuPy
    if hasattr(dsquant, "_cuda"):
        delattr(dsquant, "_cuda")


def sample(dtype, numel, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(numel) * np.exp(rng.uniform(-3, 3, numel))).astype(dtype)


def check_exact(got, expected):
    got = got.get() if hasattr(got, "get") else got
    assert ref.same_bits(np.ascontiguousarray(got), np.ascontiguousarray(expected)), \
        ref.first_difference(np.ascontiguousarray(got), np.ascontiguousarray(expected))


@pytest.mark.parametrize("numel, groups", [(4096, 32), (3000, 3), (2 * 20011, 2)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_and_in_place(cp, dtype, numel, groups):
    x_host = sample(dtype, numel, seed=numel)
    expected = dsquant.fake_quantize(x_host, groups, 6, symmetric=False, stochastic=True, seed=3)
    x = cp.asarray(x_host)
    y = dsquant.fake_quantize(x, groups, 6, symmetric=False, stochastic=True, seed=3)
    assert isinstance(y, cp.ndarray) and y.dtype == x.dtype and y.shape == x.shape
    assert y.data.ptr != x.data.ptr
    check_exact(y, expected)
    check_exact(x, x_host)                          # the input is untouched
    assert dsquant.ds_quantizer(x, groups, 6, asym=True) is x
    check_exact(x, dsquant.fake_quantize(x_host, groups, 6, symmetric=False))


@pytest.mark.parametrize("view", ["offset", "transpose", "step"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_views(cp, dtype, view):
    base_host = sample(dtype, 2 * 48 * 40 + 1, seed=5)
    take = {"offset": lambda a: a[1:].reshape(96, 40), "transpose": lambda a: a[1:].reshape(96, 40).T,
            "step": lambda a: a[1:].reshape(96, 40)[::2, ::3]}[view]
    x_host = take(base_host)
    groups = 8
    expected = dsquant.fake_quantize(np.ascontiguousarray(x_host), groups, 5, stochastic=True, seed=9)
    base = cp.asarray(base_host)
    x = take(base)
    check_exact(dsquant.fake_quantize(x, groups, 5, stochastic=True, seed=9), expected)
    out = cp.empty(x.shape, x.dtype)                # contiguous out
    assert dsquant.fake_quantize(x, groups, 5, stochastic=True, seed=9, out=out) is out
    check_exact(out, expected)
    out_t = cp.empty(x.shape[::-1], x.dtype).T      # non-contiguous out
    assert dsquant.fake_quantize(x, groups, 5, stochastic=True, seed=9, out=out_t) is out_t
    check_exact(out_t, expected)
    dsquant.ds_quantizer(x, groups, 5)
    check_exact(x, dsquant.fake_quantize(np.ascontiguousarray(x_host), groups, 5))
    mask = np.ones(base_host.size, bool)
    take(mask)[...] = False
    check_exact(base.get()[mask], base_host[mask])  # elements outside the view are untouched


def test_empty_array(cp):
    x = cp.asarray(np.zeros((0, 4), np.float32))
    y = dsquant.fake_quantize(x, 3, 8)
    assert y.shape == (0, 4)
    dsquant.ds_quantizer(x, 3, 8)


def test_gpu_bench_runs(cp, capsys):
    from dsquant import _gpu_bench
    assert _gpu_bench.main(["--log2-size", "16", "--batches", "2", "--batch", "2", "--no-deepspeed"]) == 0
    out = capsys.readouterr().out.rstrip().splitlines()
    table = out[-14:]
    assert table[0].startswith("| dtype | group | rounding | ms | GB/s | copy GB/s | vs copy | API vs copy | passes |")
    assert len([line for line in table if line.startswith("| float")]) == 12
    assert "| float32 | all | stochastic |" in out[-1]


# ------------------------------------------------------------------------------ ZeRO++ ops
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_zeropp_ops(cp, dtype, symmetric):
    """The backend's swizzle_quantize, quantized_reduction and LoCo variants give the CPU path's bits."""
    layout = dict(symmetric=symmetric, nodes=2, devices_per_node=2)
    x_host = sample(dtype, 1200, seed=7)
    q_host, p_host = dsquant.swizzle_quantize(x_host, 40, 4, **layout)
    q, p = dsquant.swizzle_quantize(cp.asarray(x_host), 40, 4, **layout)
    assert isinstance(q, cp.ndarray) and q.dtype == np.int8
    check_exact(q, q_host)
    check_exact(p, p_host)
    err_host = np.full(1200, 0.01, np.float32)
    err = cp.asarray(err_host)
    q_host, p_host = dsquant.loco_swizzle_quantize(x_host, err_host, 0.5, 40, 4, **layout)
    q, p = dsquant.loco_swizzle_quantize(cp.asarray(x_host), err, 0.5, 40, 4, **layout)
    check_exact(q, q_host)
    check_exact(err, err_host)
    reduction = dict(symmetric=symmetric, devices_per_node=2)
    r_host, rp_host = dsquant.quantized_reduction(q_host, p_host, 40, 20, 4, **reduction)
    r, rp = dsquant.quantized_reduction(q, p, 40, 20, 4, **reduction)
    check_exact(r, r_host)
    check_exact(rp, rp_host)
    err2_host = np.zeros(600, np.float32)
    err2 = cp.asarray(err2_host)
    r_host, rp_host = dsquant.loco_quantized_reduction(q_host, p_host, err2_host, 0.5, 40, 20, 4, **reduction)
    r, rp = dsquant.loco_quantized_reduction(q, p, err2, 0.5, 40, 20, 4, **reduction)
    check_exact(r, r_host)
    check_exact(err2, err2_host)
