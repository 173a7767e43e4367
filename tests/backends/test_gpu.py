"""The CUDA backend on a GPU: every op and mode gives the CPU path's bits (the CPU path is checked
against the independent reference in ops/test_fake_quantize.py), results come back in the caller's
framework on the caller's device, in place where asked, ordered on the caller's stream.

All tests are marked ``gpu`` and skipped (tests/conftest.py) without CuPy and a CUDA device;
scripts/gpu_check.sh runs them on a GPU machine."""
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import dsquant
import reference as ref
from _optional import require
from dsquant.ops.integer import dequantize_unsigned_half

ml_dtypes = require("ml_dtypes")

pytestmark = pytest.mark.gpu
ROOT_TESTS = Path(__file__).resolve().parents[1]   # tests/

DTYPES = list(ref.DTYPES)
SCHEMES = {"sym": True, "asym": False}
ROUNDING = {"nearest": False, "stochastic": True}
BITS = list(range(2, 17))
# (numel, groups): one-thread teams, odd S, warp teams, block teams, chunked groups (misaligned
# chunk starts with S odd), several chunks per group
SHAPES = {"S1": (37, 37), "S7": (7 * 41, 41), "S8": (8 * 33, 33), "S130": (130 * 9, 9), "S1000": (3000, 3),
          "S4096": (8192, 2), "S9001": (18002, 2), "S70001": (70001, 1)}
LAYOUTS = ["contiguous", "offset", "strided"]


@pytest.fixture(scope="module")
def cp():
    import cupy
    return cupy


def sample(dtype_name, numel, seed):
    """Normal data with a different scale per block of 50, so groups get different statistics."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(numel) * np.exp(rng.uniform(-4, 4, size=numel // 50 + 1)).repeat(50)[:numel]
    return x.astype(ref.DTYPES[dtype_name])


def host_bits(a) -> np.ndarray:
    """The elements of a NumPy, CuPy, torch or JAX array as unsigned integers, on the host, C order."""
    if isinstance(a, torch.Tensor):
        a = a.detach()
        if a.dtype == torch.bfloat16:
            a = a.view(torch.int16)
        a = a.cpu().numpy()
    elif type(a).__module__.startswith("cupy"):
        a = a.get()
    else:
        a = np.asarray(a)
    a = np.ascontiguousarray(a)
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def check_same(got, expected):
    g, e = host_bits(got), host_bits(expected)
    assert g.shape == e.shape
    if not np.array_equal(g, e):
        bad = np.flatnonzero(g.reshape(-1) != e.reshape(-1))
        raise AssertionError(f"{bad.size} of {g.size} elements differ; first at {bad[0]}: "
                             f"got {g.reshape(-1)[bad[0]]:#x}, expected {e.reshape(-1)[bad[0]]:#x}")


def to_torch_cuda(x: np.ndarray, device="cuda") -> torch.Tensor:
    if x.dtype == ref.BF16:
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16).to(device)
    return torch.from_numpy(x).to(device)


def laid_out(cp, x: np.ndarray, layout: str):
    """A CuPy array (torch for bfloat16, which CuPy lacks) holding x with the given layout."""
    n = x.size
    if layout == "contiguous":
        base, view = np.ascontiguousarray(x), slice(None)
    elif layout == "offset":                      # one element past an aligned address
        base, view = np.concatenate([x[:1], x]), slice(1, n + 1)
    else:
        base, view = np.repeat(x, 2), slice(None, None, 2)
    device = to_torch_cuda(base) if x.dtype == ref.BF16 else cp.asarray(base)
    return device[view]


# ------------------------------------------------------------------------------ the grid
def _grid():
    for dtype in DTYPES:
        for scheme in SCHEMES:
            for rounding in ROUNDING:
                for bits in BITS:
                    for shape in SHAPES:
                        yield pytest.param(dtype, scheme, rounding, bits, shape,
                                           id=f"{dtype}-{scheme}-{rounding}-b{bits}-{shape}")


@pytest.mark.parametrize("dtype, scheme, rounding, bits, shape", list(_grid()))
def test_fake_quantize_matches_cpu(cp, dtype, scheme, rounding, bits, shape):
    numel, groups = SHAPES[shape]
    sym, sr = SCHEMES[scheme], ROUNDING[rounding]
    x = sample(dtype, numel, seed=numel + bits)
    expected = dsquant.fake_quantize(x, groups, bits, symmetric=sym, stochastic=sr, seed=bits if sr else None)
    layout = LAYOUTS[(bits + len(shape)) % 3]      # every layout meets every shape and dtype
    xd = laid_out(cp, x, layout)
    check_same(dsquant.fake_quantize(xd, groups, bits, symmetric=sym, stochastic=sr, seed=bits if sr else None),
               expected)
    assert dsquant.ds_quantizer(xd, groups, bits, sr=False, asym=not sym) is xd
    check_same(xd, dsquant.fake_quantize(x, groups, bits, symmetric=sym))


@pytest.mark.parametrize("rounding", ROUNDING)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_every_16_bit_pattern(cp, dtype, scheme, rounding):
    """All 65536 encodings (subnormals, ±0, ±Inf, NaNs) as inputs: covers the device's hardware
    conversions (cuda/dsq_math.cuh DSQ_GPU_ISA paths) for every value."""
    x = np.arange(1 << 16, dtype=np.uint16).view(ref.DTYPES[dtype])
    rng = np.random.default_rng(0)
    x = x[rng.permutation(x.size)]                 # mix magnitudes within groups
    sym, sr = SCHEMES[scheme], ROUNDING[rounding]
    xd = to_torch_cuda(x) if dtype == "bfloat16" else cp.asarray(x)
    for groups, bits in ((256, 2), (4096, 8), (1 << 16, 16), (16, 5)):
        check_same(dsquant.fake_quantize(xd, groups, bits, symmetric=sym, stochastic=sr, seed=3 if sr else None),
                   dsquant.fake_quantize(x, groups, bits, symmetric=sym, stochastic=sr, seed=3 if sr else None))


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values(cp, dtype):
    info = ml_dtypes.finfo(ref.DTYPES[dtype])
    specials = [np.nan, np.inf, -np.inf, 0.0, -0.0, float(info.max), -float(info.max),
                float(info.smallest_subnormal), -float(info.tiny), 1.0, -1.0]
    x = sample(dtype, 8 * 64, seed=1)
    x[::7][: len(specials)] = np.array(specials, dtype=ref.DTYPES[dtype])
    x[8:16] = np.nan                               # a group with no finite element
    x[16:24] = np.inf
    for sym in (True, False):
        for sr in (False, True):
            xd = to_torch_cuda(x) if dtype == "bfloat16" else cp.asarray(x)
            check_same(dsquant.fake_quantize(xd, 64, 8, symmetric=sym, stochastic=sr, seed=2 if sr else None),
                       dsquant.fake_quantize(x, 64, 8, symmetric=sym, stochastic=sr, seed=2 if sr else None))


def test_global_random_stream_is_shared_with_the_cpu(cp):
    """Without a seed both paths draw from the same library stream and advance it alike."""
    x = sample("float32", 4099, seed=5)            # n not a multiple of 4: later offsets are unaligned
    dsquant.manual_seed(123)
    gpu = [dsquant.fake_quantize(cp.asarray(x), 1, 4, stochastic=True) for _ in range(3)]
    dsquant.manual_seed(123)
    cpu = [dsquant.fake_quantize(x, 1, 4, stochastic=True) for _ in range(3)]
    for g, c in zip(gpu, cpu):
        check_same(g, c)


# ------------------------------------------------------------------------------ large cases
@pytest.mark.slow
@pytest.mark.parametrize("sym, sr", [(True, False), (False, True)])
def test_single_group_of_2_to_the_28(cp, sym, sr):
    n = 1 << 28
    x = (cp.random.standard_normal(n, dtype=cp.float32) * 3).astype(cp.float16)
    x[12345] = cp.nan
    host = x.get()
    check_same(dsquant.fake_quantize(x, 1, 8, symmetric=sym, stochastic=sr, seed=9 if sr else None),
               dsquant.fake_quantize(host, 1, 8, symmetric=sym, stochastic=sr, seed=9 if sr else None))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_a_million_groups_of_8(cp, dtype):
    x = cp.random.standard_normal(8 * 10**6, dtype=cp.float32).astype(dtype)
    host = x.get()
    for sym, sr in ((True, False), (False, True)):
        check_same(dsquant.fake_quantize(x, 10**6, 4, symmetric=sym, stochastic=sr, seed=1 if sr else None),
                   dsquant.fake_quantize(host, 10**6, 4, symmetric=sym, stochastic=sr, seed=1 if sr else None))


# ------------------------------------------------------------------------------ integer codes
# (the grid over dtypes, bits, schemes and group sizes is ops/test_quantize.py::test_gpu_matches_cpu)
def check_codes(got, expected):
    """Equal int8 codes (a NumPy, CuPy, torch or JAX array against a host one)."""
    if isinstance(got, torch.Tensor):
        got = got.cpu().numpy()
    elif type(got).__module__.startswith("cupy"):
        got = got.get()
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape and np.array_equal(got.view(np.uint8), expected.view(np.uint8))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_integer_ops_every_16_bit_pattern(cp, dtype):
    """All 65536 encodings as inputs (the device's hardware conversions of dsq_math.cuh load every
    value), and every code byte dequantized into the 16-bit dtype (they store every result)."""
    x = np.arange(1 << 16, dtype=np.uint16).view(ref.DTYPES[dtype])
    x = x[np.random.default_rng(0).permutation(x.size)]
    xd = to_torch_cuda(x) if dtype == "bfloat16" else cp.asarray(x)
    for groups, bits in ((4096, 2), (1 << 16, 2), (1 << 16, 8), (16, 4), (256, 5)):
        for sym in (True, False):
            q, params = dsquant.quantize(xd, groups, bits, symmetric=sym)
            q_cpu, params_cpu = dsquant.quantize(x, groups, bits, symmetric=sym)
            check_codes(q, q_cpu)
            check_same(params, params_cpu)
            check_same(dsquant.dequantize(q, params, bits, dtype=dtype),
                       dsquant.dequantize(q_cpu, params_cpu, bits, dtype=dtype))


def test_integer_ops_torch_cuda_in_torch_out():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        x = torch.randn(96, 40, device="cuda", dtype=torch.float32).mul_(4).to(dtype)
        x[3, 7] = float("nan")
        q, params = dsquant.quantize(x, 96, 4, symmetric=False)
        assert q.is_cuda and q.device == x.device and q.dtype == torch.int8 and q.shape == (96, 20)
        assert params.is_cuda and params.dtype == torch.float32 and params.shape == (96, 2)
        q_cpu, params_cpu = dsquant.quantize(x.cpu(), 96, 4, symmetric=False)
        check_codes(q, q_cpu)
        check_same(params, params_cpu)
        y = dsquant.dequantize(q, params, 4, dtype=dtype)
        assert y.is_cuda and y.dtype == dtype and y.shape == x.shape
        check_same(y, dsquant.dequantize(q_cpu, params_cpu, 4, dtype=dtype))
        out = torch.empty(40, 96, device="cuda", dtype=dtype).t()         # non-contiguous out
        assert dsquant.dequantize(q.view(torch.uint8), params, 4, out=out) is out
        check_same(out, y)
    t = torch.randn(40, 96, device="cuda", requires_grad=True).t()       # non-contiguous, requires grad
    q, params = dsquant.quantize(t, 8, 8)
    q_cpu, params_cpu = dsquant.quantize(t.detach().cpu().contiguous(), 8, 8)
    check_codes(q, q_cpu)
    check_same(params, params_cpu)


def test_integer_ops_cupy_views(cp):
    base = cp.asarray(sample("float32", 64 * 48 + 1, seed=9))
    x = base[1:].reshape(64, 48).T                                        # misaligned and transposed
    host = np.ascontiguousarray(x.get())
    for bits in (2, 3, 4, 8):
        q, params = dsquant.quantize(x, 16, bits)
        assert isinstance(q, cp.ndarray) and isinstance(params, cp.ndarray)
        q_cpu, params_cpu = dsquant.quantize(host, 16, bits)
        check_codes(q, q_cpu)
        check_same(params, params_cpu)
        codes = cp.concatenate([cp.zeros(1, cp.int8), q.reshape(-1)])[1:].reshape(q.shape)   # odd address
        check_same(dsquant.dequantize(codes, params, bits, dtype="float64"),
                   dsquant.dequantize(q_cpu, params_cpu, bits, dtype="float64"))


def test_unsigned_half_matches_cpu(cp):
    rng = np.random.default_rng(4)
    for bits, num_group, group_size in ((4, 37, 6), (8, 5, 1000), (4, 3, 70002), (8, 64, 128)):
        data = rng.integers(0, 256, num_group * group_size * bits // 8, dtype=np.uint8)
        scale = rng.uniform(0.5, 30, num_group).astype(np.float16)
        minimum = rng.uniform(-4, 4, num_group).astype(np.float16)
        scale[:2] = (0.0, np.inf)
        minimum[-1] = np.nan
        expected = dequantize_unsigned_half(data, scale, minimum, num_group, group_size, bits)
        y = dequantize_unsigned_half(cp.asarray(data), cp.asarray(scale), cp.asarray(minimum), num_group, group_size,
                                     bits)
        assert isinstance(y, cp.ndarray) and y.dtype == cp.float16
        check_same(y, expected)


def test_integer_ops_jax_gpu():
    jax = pytest.importorskip("jax")
    try:
        gpu = jax.devices("gpu")[0]
    except RuntimeError:
        pytest.skip("JAX has no GPU backend here")
    x = sample("bfloat16", 4096, seed=6)
    q, params = dsquant.quantize(jax.device_put(x, gpu), 16, 4, symmetric=False)
    assert isinstance(q, jax.Array) and list(q.devices())[0].platform == "gpu" and q.dtype == jax.numpy.int8
    q_cpu, params_cpu = dsquant.quantize(x, 16, 4, symmetric=False)
    check_codes(q, q_cpu)
    check_same(params, params_cpu)
    y = dsquant.dequantize(q, params, 4, dtype="bfloat16")
    assert isinstance(y, jax.Array) and y.dtype == jax.numpy.bfloat16
    check_same(y, dsquant.dequantize(q_cpu, params_cpu, 4, dtype="bfloat16"))


def test_integer_ops_on_a_side_stream_are_ordered():
    """quantize reads after a copy queued behind a long sleep on torch's current stream, and
    dequantize's result is complete for the work queued after it."""
    n = 1 << 22
    src = torch.randn(n, device="cuda")
    q_cpu, params_cpu = dsquant.quantize(src.cpu(), 1024, 4)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        x = torch.zeros(n, device="cuda")
        torch.cuda._sleep(200_000_000)
        x.copy_(src)
        q, params = dsquant.quantize(x, 1024, 4)
        y = dsquant.dequantize(q, params, 4) * 1
    side.synchronize()
    check_codes(q, q_cpu)
    check_same(params, params_cpu)
    check_same(y, dsquant.dequantize(q_cpu, params_cpu, 4))


@pytest.mark.slow
@pytest.mark.parametrize("groups", [1, 1 << 21])
def test_integer_ops_on_2_to_the_28(cp, groups):
    x = (cp.random.standard_normal(1 << 28, dtype=cp.float32) * 3).astype(cp.float16)
    x[12345] = cp.nan
    host = x.get()
    for bits in (4, 8):
        q, params = dsquant.quantize(x, groups, bits, symmetric=False)
        q_cpu, params_cpu = dsquant.quantize(host, groups, bits, symmetric=False)
        check_codes(q, q_cpu)
        check_same(params, params_cpu)
        check_same(dsquant.dequantize(q, params, bits, dtype="float16"),
                   dsquant.dequantize(q_cpu, params_cpu, bits, dtype="float16"))


# ------------------------------------------------------------------------------ frameworks
def test_cupy_in_cupy_out_and_in_place(cp):
    x = cp.asarray(sample("float32", 4096, seed=2).reshape(64, 64))
    y = dsquant.fake_quantize(x, 64, 4)
    assert isinstance(y, cp.ndarray) and y.shape == (64, 64) and y.dtype == cp.float32
    assert y.device.id == x.device.id and y.data.ptr != x.data.ptr
    expected = dsquant.fake_quantize(x.get(), 64, 4)
    check_same(y, expected)
    ptr = x.data.ptr
    assert dsquant.ds_quantizer(x, 64, 4) is x and x.data.ptr == ptr
    check_same(x, expected)


def test_cupy_out_argument_and_non_contiguous(cp):
    base = cp.asarray(sample("float16", 32 * 48, seed=3).reshape(32, 48))
    x = base.T                                     # non-contiguous input
    expected = dsquant.fake_quantize(np.ascontiguousarray(base.get().T), 8, 6)
    out = cp.empty((48, 32), cp.float16)
    assert dsquant.fake_quantize(x, 8, 6, out=out) is out
    check_same(out, expected)
    out_t = cp.empty((32, 48), cp.float16).T       # non-contiguous out
    assert dsquant.fake_quantize(x, 8, 6, out=out_t) is out_t
    check_same(out_t, expected)
    snapshot = base.copy()
    dsquant.ds_quantizer(x, 8, 6)                  # in place through a transposed view
    check_same(x, expected)
    assert not cp.array_equal(base, snapshot)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_torch_cuda_in_torch_out_and_in_place(dtype):
    x = torch.randn(96, 40, device="cuda", dtype=torch.float32).mul_(4).to(dtype)
    host = x.cpu()
    expected = dsquant.fake_quantize(host, 96, 8, symmetric=False)
    y = dsquant.fake_quantize(x, 96, 8, symmetric=False)
    assert isinstance(y, torch.Tensor) and y.device == x.device and y.dtype == dtype and y.shape == x.shape
    check_same(y, expected)
    ptr = x.data_ptr()
    assert dsquant.ds_quantizer(x, 96, 8, asym=True) is x and x.data_ptr() == ptr
    check_same(x, expected)
    t = torch.randn(40, 96, device="cuda").to(dtype).t()       # non-contiguous, in place
    expected_t = dsquant.fake_quantize(t.cpu().contiguous(), 8, 5, stochastic=True, seed=4)
    check_same(dsquant.fake_quantize(t, 8, 5, stochastic=True, seed=4), expected_t)


def test_torch_requires_grad_tensor():
    w = torch.randn(256, device="cuda", requires_grad=True)
    check_same(dsquant.fake_quantize(w, 4, 8), dsquant.fake_quantize(w.detach().cpu(), 4, 8))


def test_jax_gpu_in_jax_out():
    jax = pytest.importorskip("jax")
    try:
        gpu = jax.devices("gpu")[0]
    except RuntimeError:
        pytest.skip("JAX has no GPU backend here")
    for name in ("float32", "bfloat16"):
        x = sample(name, 4096, seed=6)
        xj = jax.device_put(x, gpu)
        y = dsquant.fake_quantize(xj, 16, 8, symmetric=False, stochastic=True, seed=8)
        assert isinstance(y, jax.Array) and y.dtype == xj.dtype and y.shape == xj.shape
        assert list(y.devices())[0].platform == "gpu"
        check_same(y, dsquant.fake_quantize(x, 16, 8, symmetric=False, stochastic=True, seed=8))
        with pytest.raises(BufferError, match="immutable"):
            dsquant.ds_quantizer(xj, 16, 8)


# ------------------------------------------------------------------------------ streams, devices
def test_torch_work_queued_on_a_side_stream_is_seen():
    """The kernels run on torch's current stream: a copy still queued behind a long sleep on a
    non-default stream must land before dsquant reads, and dsquant's writes before later work."""
    n = 1 << 22
    src = torch.randn(n, device="cuda")
    expected = dsquant.fake_quantize(src.cpu(), 64, 8)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())  # src is complete before the side stream reads it
    with torch.cuda.stream(side):
        x = torch.zeros(n, device="cuda")
        torch.cuda._sleep(200_000_000)             # ~0.1 s of GPU time before the copy runs
        x.copy_(src)
        y = dsquant.fake_quantize(x, 64, 8)
        dsquant.ds_quantizer(x, 64, 8)
        z = x * 1                                  # queued after the in-place kernel
    side.synchronize()
    check_same(y, expected)
    check_same(z, expected)


def test_cupy_work_queued_on_a_side_stream_is_seen(cp):
    n = 1 << 22
    src = cp.random.standard_normal(n, dtype=cp.float32)
    expected = dsquant.fake_quantize(src.get(), 64, 8)
    with cp.cuda.Stream(non_blocking=True) as side:
        x = cp.zeros(n, cp.float32)
        x[...] = src
        y = dsquant.fake_quantize(x, 64, 8)
    side.synchronize()
    check_same(y, expected)


def test_input_on_a_second_gpu(cp):
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    x_host = sample("float32", 4096, seed=7)
    expected = dsquant.fake_quantize(x_host, 16, 8, stochastic=True, seed=1)
    with cp.cuda.Device(1):
        x = cp.asarray(x_host)
    with cp.cuda.Device(0):                        # the current device is another one
        y = dsquant.fake_quantize(x, 16, 8, stochastic=True, seed=1)
        assert y.device.id == 1
        dsquant.ds_quantizer(x, 16, 8)
    check_same(y, expected)
    check_same(x, dsquant.fake_quantize(x_host, 16, 8))
    t = torch.from_numpy(x_host).to("cuda:1")
    yt = dsquant.fake_quantize(t, 16, 8, stochastic=True, seed=1)
    assert yt.device == torch.device("cuda:1")
    check_same(yt, expected)


def test_info_reports_the_cuda_backend():
    assert dsquant.info()["backends"]["cuda"] is True


def test_zeropp_ops_torch_cuda():
    """torch CUDA in, torch CUDA out, bfloat16 included, with the CPU path's bits."""
    layout = dict(symmetric=False, nodes=2, devices_per_node=2)
    for dtype in ("float16", "bfloat16", "float32"):
        x_host = sample(dtype, 4096, seed=3)
        x = to_torch_cuda(x_host)
        q_host, p_host = dsquant.swizzle_quantize(x_host, 64, 4, **layout)
        q, p = dsquant.swizzle_quantize(x, 64, 4, **layout)
        assert isinstance(q, torch.Tensor) and q.is_cuda and q.device == x.device
        check_codes(q, q_host)
        check_same(p, p_host)
        err_host = np.zeros(4096, np.float32)
        err = torch.zeros(4096, device="cuda")
        q_host, p_host = dsquant.loco_swizzle_quantize(x_host, err_host, 0.8, 64, 4, **layout)
        q, p = dsquant.loco_swizzle_quantize(x, err, 0.8, 64, 4, **layout)
        check_codes(q, q_host)
        check_same(err, err_host)
        reduction = dict(symmetric=False, devices_per_node=2)
        r_host, rp_host = dsquant.quantized_reduction(q_host, p_host, 64, 32, 4, **reduction)
        r, rp = dsquant.quantized_reduction(q, p, 64, 32, 4, **reduction)
        check_codes(r, r_host)
        check_same(rp, rp_host)
        err2_host = np.zeros(2048, np.float32)
        err2 = torch.zeros(2048, device="cuda")
        r_host, rp_host = dsquant.loco_quantized_reduction(q_host, p_host, err2_host, 0.8, 64, 32, 4, **reduction)
        r, rp = dsquant.loco_quantized_reduction(q, p, err2, 0.8, 64, 32, 4, **reduction)
        check_codes(r, r_host)
        check_same(err2, err2_host)


# ------------------------------------------------------------------------------ the NCCL collective
def _nccl():
    """cupy.cuda.nccl, or a skip when libnccl cannot be loaded (CuPy then warns, an error here, and
    leaves the module without its functions)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cupy.cuda import nccl
    if not getattr(nccl, "available", False):
        pytest.skip("libnccl cannot be loaded (cupy.cuda.nccl.available is False)")
    return nccl


def test_nccl_collective_on_one_gpu(cp):
    """A 1-rank world (one GPU still runs the whole path: both exchanges are NCCL self send/recv)
    against the exact sum, and bit for bit against the MPI-free CPU result of the same ops."""
    nccl = _nccl()
    from dsquant import distributed
    engine = distributed.NCCLEngine(1, 1, nccl.get_unique_id(), 0)
    x_host = sample("float32", 1 << 16, seed=11)
    for x in (cp.asarray(x_host), torch.from_numpy(x_host).cuda()):
        (got,) = distributed.all_to_all_quant_reduce([x], comm=engine, nodes=1, devices_per_node=1, bits=8,
                                                     groups=64)
        assert type(got) is type(x) and tuple(got.shape) == (1 << 16,)
        q, p = dsquant.swizzle_quantize(x_host, 64, 8)
        q, p = dsquant.quantized_reduction(q, p, 64, 64, 8, devices_per_node=1)
        check_same(got, dsquant.dequantize(q, p, 8))
        step = np.abs(x_host.reshape(64, -1)).max(axis=1).repeat(1024) / 128
        assert (np.abs(host_bits(got).view(np.float32) - x_host) <= 2 * step * (1 + 1e-3)).all()
    state = distributed.LocoState(beta=0.5)
    (got,) = distributed.all_to_all_quant_reduce([cp.asarray(x_host)], comm=engine, nodes=1, devices_per_node=1,
                                                 loco=state)
    assert isinstance(state.buffers[0][0], cp.ndarray) and float(abs(state.buffers[0][0]).max()) > 0


def test_nccl_collective_on_several_gpus(cp):
    """One process per GPU (2 nodes x n/2 devices, or 1 x 2), the unique id passed in the script,
    each rank's partition against the exact sum / nodes within the two-stage bound."""
    import subprocess
    import sys
    gpus = cp.cuda.runtime.getDeviceCount()
    if gpus < 2:
        pytest.skip(f"needs 2 or more GPUs, this machine has {gpus}")
    world = gpus - gpus % 2
    nodes, dpn = (2, world // 2) if world >= 4 else (1, 2)
    nccl = _nccl()
    script = f"""
import sys, numpy as np, cupy
sys.path[:0] = [{str(ROOT_TESTS)!r}, {str(ROOT_TESTS / 'backends')!r}]
import test_gpu
from dsquant import distributed
rank = int(sys.argv[1]); cupy.cuda.Device(rank).use()
engine = distributed.NCCLEngine({nodes}, {dpn}, {nccl.get_unique_id()!r}, rank)
grads = [test_gpu.sample("float32", {world} * 8192, seed=r) for r in range({world})]
(got,) = distributed.all_to_all_quant_reduce([cupy.asarray(grads[rank])], comm=engine, nodes={nodes},
                                             devices_per_node={dpn}, groups={world} * 8)
exact = sum(g.astype(np.float64) for g in grads) / {nodes}
part = slice(rank * 8192, (rank + 1) * 8192)
steps = sum(np.abs(g.astype(np.float64).reshape({world} * 8, -1)).max(axis=1) for g in grads) / 8
limit = np.repeat(2 * steps / {nodes}, 1024)[part] * (1 + 1e-3) + 1e-6 * np.abs(exact[part])
assert (np.abs(got.get() - exact[part]) <= limit).all(), rank
print("rank", rank, "OK")
"""
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=ROOT_TESTS.parent) for r in range(world)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for r, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0 and f"rank {r} OK" in out, out[-3000:]
