"""The CUDA backend's Python code (dsquant/backends/cuda/device.py, dsquant/bench/gpu.py) run end to end without
a GPU: CuPy replaced by tests/_fake_cupy.py (host memory that says it is on CUDA device 0), the
compiled kernels' lowered names from a real NVRTC compile, the kernels themselves run by the CPU
emulation. Results must be the CPU path's bits for every layout the backend handles."""
import gc
import json
import math
import re
import weakref

import numpy as np
import pytest

import _fake_cupy
import dsquant
from dsquant.backends.cuda import kernels as _kernels
from dsquant.interop import adapters
from helpers import check_exact, sample

DTYPES = ["float16", "float32", "float64"]       # CuPy has no bfloat16


@pytest.fixture
def cp(fake_cupy):
    """CuPy 14 (the device image's), whose ExternalStream warns."""
    return fake_cupy


@pytest.fixture(params=[13, 14], ids=["cupy13", "cupy14"])
def cp_any(request, monkeypatch, emu, kernel_cache):
    yield from _fake_cupy.installed(monkeypatch, emu, request.param)




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
    y = dsquant.fake_quantize(x, 1, 8)
    assert y.shape == (0, 4)
    dsquant.ds_quantizer(x, 1, 8)


# ------------------------------------------------------------------------------ streams
def test_the_stand_in_warns_for_external_stream_as_cupy_14(cp):
    with pytest.warns(DeprecationWarning, match=re.escape(_fake_cupy.EXTERNAL_STREAM_DEPRECATION)):
        cp.cuda.ExternalStream(0x1230)


def test_kernels_run_on_cupys_current_stream(cp):
    x_host = sample("float32", 4096, seed=2)
    x = cp.asarray(x_host)
    with cp.cuda.Stream(non_blocking=True) as side:
        y = dsquant.fake_quantize(x, 32, 8)
    assert _fake_cupy.ndarray.exports == [side.ptr]            # the producer is told the consumer stream
    assert _fake_cupy.RawModule.streams == [side.ptr]
    check_exact(y, dsquant.fake_quantize(x_host, 32, 8))


def test_kernels_run_on_a_framework_stream(cp_any, monkeypatch):
    """A framework that names its own stream (torch's current one): the kernels and the DLPack
    export use it, wrapped by CuPy 14's Stream.from_external (ExternalStream would warn, an error
    here) or CuPy 13's ExternalStream."""
    monkeypatch.setattr(adapters.CupyAdapter, "cuda_stream", lambda self, obj, device_id: 0xBEEF0)
    x_host = sample("float16", 3000, seed=4)
    q, params = dsquant.quantize(cp_any.asarray(x_host), 3, 4)
    assert _fake_cupy.ndarray.exports == [0xBEEF0]
    assert _fake_cupy.RawModule.streams and set(_fake_cupy.RawModule.streams) == {0xBEEF0}
    q_cpu, params_cpu = dsquant.quantize(x_host, 3, 4)
    check_exact(q, q_cpu)
    check_exact(params, params_cpu)


def test_held_inputs_live_until_their_kernels_are_done(cp, monkeypatch):
    """Inputs of a framework that frees memory on its own schedule (JAX) stay referenced until the
    event recorded after their kernels is done; others are dropped when the call returns."""
    x_host = sample("float32", 4096, seed=3)
    monkeypatch.setattr(_fake_cupy.Event, "pending", True)     # the kernels "still run"
    x = cp.asarray(x_host)
    alive = weakref.ref(x)
    dsquant.fake_quantize(x, 32, 8)
    del x
    gc.collect()
    assert alive() is None                                     # CuPy: not held
    monkeypatch.setattr(adapters.CupyAdapter, "hold_until_done", True)
    x = cp.asarray(x_host)
    alive = weakref.ref(x)
    dsquant.fake_quantize(x, 32, 8)
    del x
    gc.collect()
    assert alive() is not None                                 # held while its kernels are not done
    dsquant.fake_quantize(cp.asarray(x_host), 32, 8)           # still not done: still held
    gc.collect()
    assert alive() is not None
    _fake_cupy.Event.pending = False
    dsquant.fake_quantize(cp.asarray(x_host), 32, 8)           # done: the next call lets it go
    gc.collect()
    assert alive() is None


def test_ptx_the_driver_refuses_is_explained(cp, monkeypatch):
    """A GPU newer than NVRTC's list gets PTX; when the driver cannot load it the error names the
    versions and what to install."""
    newest = max(_kernels.supported_archs())
    major, minor = _kernels.nvrtc_version()
    monkeypatch.setattr(_fake_cupy.Device, "compute_capability", str(newest + 10))
    monkeypatch.setattr(cp.cuda.runtime, "driverGetVersion", lambda: major * 1000 + minor * 10)

    def refuse(self, mangled):
        raise RuntimeError("CUDA_ERROR_UNSUPPORTED_PTX_VERSION: the provided PTX was compiled with an "
                           "unsupported toolchain.")
    monkeypatch.setattr(_fake_cupy.RawModule, "get_function", refuse)
    with pytest.raises(RuntimeError, match=f"sm_{newest + 10}") as info:
        dsquant.fake_quantize(cp.asarray(np.zeros(64, np.float32)), 4, 8)
    text = str(info.value)
    assert f"NVRTC {major}.{minor}" in text and "UNSUPPORTED_PTX_VERSION" in text
    assert "pip install -U nvidia-cuda-nvrtc" in text and f"driver for CUDA {major}.{minor} or newer" in text


def test_kernels_cli_targets_the_visible_gpu_and_explains_unloadable_ptx(cp, monkeypatch, capsys):
    from dsquant.backends.cuda import cli
    assert cli._device_targets() == ["sm_90"]
    newest = max(_kernels.supported_archs())
    monkeypatch.setattr(_fake_cupy.Device, "compute_capability", str(newest + 10))
    monkeypatch.setattr(cp.cuda.runtime, "driverGetVersion", lambda: 12080)    # older than any NVRTC 13
    assert cli.main([]) == 1
    assert f"sm_{newest + 10}" in capsys.readouterr().err


def test_gpu_bench_runs(cp, capsys):
    from dsquant.bench import gpu as _gpu_bench
    assert _gpu_bench.main(["--log2-size", "16", "--batches", "2", "--batch", "2", "--no-deepspeed"]) == 0
    out = capsys.readouterr().out.rstrip().splitlines()
    fake = out.index("| dtype | group | rounding | ms | GB/s | copy GB/s | vs copy | API vs copy | passes "
                     "| bandwidth |")
    integer = out.index("| op | dtype | bits | group | ms | GB/s | copy GB/s | vs copy | API vs copy |")
    zeropp = out.index("| op | elements | ms | GB/s | copy GB/s | vs copy |")
    assert [line.split(" | ")[:3] for line in out[fake + 2:fake + 14]] == [
        ["| " + dtype, group, rounding] for dtype in ("float16", "float32") for group in ("128", "4096", "all")
        for rounding in ("nearest", "stochastic")]
    assert [line.split(" | ")[:4] for line in out[integer + 2:integer + 18]] == [
        ["| " + op, dtype, bits, group] for dtype in ("float16", "float32") for bits in ("8", "4")
        for group in ("128", "4096") for op in ("quantize", "dequantize")]
    assert [line.split(" | ")[:2] for line in out[zeropp + 2:]] == [
        ["| " + op, f"{size:,}"] for size in (1 << 14, 1 << 15, 1 << 16)
        for op in ("swizzle_quantize", "quantized_reduction")]


def test_gpu_bench_reports_a_failing_row_and_goes_on(cp, capsys, monkeypatch, tmp_path):
    from dsquant.bench import gpu as _gpu_bench

    def broken(*args, **kwargs):
        raise MemoryError("out of memory allocating 1,024 bytes")
    monkeypatch.setattr(_gpu_bench, "dequantize", broken)
    path = tmp_path / "bench.json"
    argv = ["--log2-size", "16", "--batches", "1", "--batch", "1", "--no-deepspeed", "--json", str(path)]
    assert _gpu_bench.main(argv) == 1                                  # a row failed
    out = capsys.readouterr().out.splitlines()
    failed = [line for line in out if "FAILED" in line]
    assert len(failed) == 8 and all(line.startswith("| dequantize |") for line in failed)
    assert "| dequantize | float16 | 8 | 128 | FAILED: MemoryError: out of memory allocating 1,024 bytes |" in out
    report = json.loads(path.read_text())
    assert len(report["rows"]) == 12 and len(report["zeropp_rows"]) == 6          # the other tables are whole
    assert [r["op"] for r in report["int_rows"] if "error" not in r] == ["quantize"] * 8


# ------------------------------------------------------------------------------ integer codes
INT_CASES = {"S128": ((20, 128), 20), "S3": ((6, 8), 16), "S9001": ((9001, 4), 4), "S70001": ((70001, 4), 4)}


@pytest.mark.parametrize("case", INT_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_quantize_and_dequantize(cp, dtype, case):
    shape, groups = INT_CASES[case]
    x_host = sample(dtype, math.prod(shape), seed=groups).reshape(shape)
    x_host.reshape(-1)[::97] = np.nan
    x = cp.asarray(x_host)
    for bits in (2, 4, 5, 8):
        for sym in (True, False):
            q, params = dsquant.quantize(x, groups, bits, symmetric=sym)
            q_cpu, params_cpu = dsquant.quantize(x_host, groups, bits, symmetric=sym)
            assert isinstance(q, cp.ndarray) and q.dtype == np.int8 and q.shape == q_cpu.shape
            assert isinstance(params, cp.ndarray) and params.dtype == np.float32 and params.shape == params_cpu.shape
            check_exact(q, q_cpu)
            check_exact(params, params_cpu)
            y = dsquant.dequantize(q, params, bits, dtype=dtype)
            assert isinstance(y, cp.ndarray) and y.dtype == x.dtype and y.shape == shape
            check_exact(y, dsquant.dequantize(q_cpu, params_cpu, bits, dtype=dtype))
    check_exact(x, x_host)                          # the input is untouched


@pytest.mark.parametrize("view", ["offset", "transpose", "step"])
def test_integer_ops_on_views(cp, view):
    take = {"offset": lambda a: a[1:].reshape(96, 40), "transpose": lambda a: a[1:].reshape(96, 40).T,
            "step": lambda a: a[1:].reshape(96, 40)[::2, ::2]}[view]
    base_host = sample("float16", 96 * 40 + 1, seed=5)
    x_host = np.ascontiguousarray(take(base_host))
    x = take(cp.asarray(base_host))
    q_cpu, params_cpu = dsquant.quantize(x_host, 8, 4, symmetric=False)
    q, params = dsquant.quantize(x, 8, 4, symmetric=False)
    check_exact(q, q_cpu)
    check_exact(params, params_cpu)
    expected = dsquant.dequantize(q_cpu, params_cpu, 4, dtype="float32")
    q_wide = cp.asarray(np.repeat(q_cpu, 2, axis=-1))[..., ::2]          # non-contiguous codes
    params_t = cp.asarray(np.ascontiguousarray(params_cpu.T)).T          # non-contiguous params
    check_exact(dsquant.dequantize(q_wide, params_t, 4), expected)
    out = cp.empty(expected.shape, np.float32)
    assert dsquant.dequantize(q, params, 4, out=out) is out
    check_exact(out, expected)
    out_t = cp.empty(expected.shape[::-1], np.float32).T                 # non-contiguous out
    assert dsquant.dequantize(q.view(np.uint8), params, 4, out=out_t) is out_t
    check_exact(out_t, expected)
    bf16 = dsquant.dequantize(q, params, 4, dtype="bfloat16")             # CuPy has no bfloat16: its bits
    assert bf16.dtype == np.uint16
    check_exact(bf16, dsquant.dequantize(q_cpu, params_cpu, 4, dtype="bfloat16").view(np.uint16))


def test_integer_ops_on_empty_arrays(cp):
    q, params = dsquant.quantize(cp.asarray(np.zeros((0, 4), np.float32)), 1, 4, symmetric=False)
    assert q.shape == (0, 2)
    check_exact(params, np.array([[1.0, 0.0]], np.float32))
    assert dsquant.dequantize(q, params, 4).shape == (0, 4)


@pytest.mark.parametrize("symmetric", [True, False])
def test_zeropp_ops_on_empty_arrays(cp, symmetric):
    """An empty input is one empty group: its params are an all-zero group's, [1] or [1, 0] (the
    CPU path writes them too), not whatever the fresh buffer held."""
    expected = np.array([[1.0]] if symmetric else [[1.0, 0.0]], np.float32)
    q, params = dsquant.swizzle_quantize(cp.asarray(np.zeros(0, np.float32)), 1, 4, symmetric=symmetric)
    assert q.shape == (0,)
    check_exact(params, expected)
    r, rp = dsquant.quantized_reduction(q, params, 1, 1, 4, symmetric=symmetric, devices_per_node=1)
    assert r.shape == (0,)
    check_exact(rp, expected)


@pytest.mark.parametrize("bits", [4, 8])
def test_deepspeed_compat_on_gpu_arrays(cp, bits):
    from dsquant.compat import deepspeed as ds_ops
    x_host = sample("float16", 64 * 48, seed=bits).reshape(64, 48)
    q, params = ds_ops.quantize(cp.asarray(x_host), 64, bits, ds_ops.Asymmetric)
    q_cpu, params_cpu = ds_ops.quantize(x_host, 64, bits, ds_ops.Asymmetric)
    check_exact(q, q_cpu)
    check_exact(params, params_cpu)
    check_exact(ds_ops.dequantize(q, params, 64, bits, ds_ops.Asymmetric),
                ds_ops.dequantize(q_cpu, params_cpu, 64, bits, ds_ops.Asymmetric))
    rng = np.random.default_rng(bits)
    data = rng.integers(0, 256, 48 * 64 * bits // 8, dtype=np.uint8)
    scale = rng.uniform(1, 20, 48).astype(np.float16)
    minimum = rng.uniform(-4, 4, 48).astype(np.float16)
    experimental = {4: ds_ops.dequantize_int4_to_half_experimental, 8: ds_ops.dequantize_int8_to_half_experimental}
    y = experimental[bits](cp.asarray(data), cp.asarray(scale), cp.asarray(minimum), 48, 64)
    assert isinstance(y, cp.ndarray) and y.dtype == np.float16 and y.shape == (48, 64)
    check_exact(y, experimental[bits](data, scale, minimum, 48, 64))


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
