"""The ZeRO++ kernels of cuda/dsq_zeropp.cu, run on the CPU by the emulation in tests/emu with the
launch plans of the CUDA backend (dsquant.backends.cuda.launch): swizzle_quantize, quantized_reduction and
their LoCo variants give the bits of the CPU path, which tests/test_zeropp.py checks against the
independent reference; the plain cases are also checked against that reference directly.
Sizes cover groups that share code bytes (runs of several groups per block), odd group sizes,
large groups, every dtype and error format, and a grid smaller than the work (grid-stride)."""
import numpy as np
import pytest

import dsquant
import reference as bits_ref
import reference_int as ref
import reference_zeropp as zref
from dsquant.core import dtypes
from dsquant.backends.cuda import launch as _launch

DTYPE_CODES = {d.name: d.code for d in dtypes.FLOAT_DTYPES}
LAYOUT = dict(pipeline=1, nodes=2, devices_per_node=2)
# (numel, groups, bits): one-byte groups, groups sharing bytes (S = 3 at 4 bits: runs of 2; S = 5
# at 2 bits: runs of 4), odd bits, groups larger than a block's one pass.
CASES = {"S8b4": (64, 8, 4), "S3b4": (48, 16, 4), "S5b2": (160, 32, 2), "S7b5": (112, 16, 5),
         "S600b8": (2400, 4, 8)}




def sample(dtype, numel, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(numel) * np.exp(rng.uniform(-3, 3, size=numel // 8 + 1)).repeat(8)[:numel]
    x = x.astype(ref.DTYPES[dtype])
    x[numel // 3] = np.inf          # non-finite elements: NaN -> 0, Inf -> max code
    x[numel // 2] = np.nan
    return x


def emulated_swizzle(emu, x, groups, bits, sym, err=None, beta=0.0, max_grid=_launch.MAX_GRID):
    q = np.full(x.size * bits // 8 if 8 % bits == 0 else x.size, 0x5A, np.uint8)
    params = np.full((groups, 1 if sym else 2), np.nan, np.float32)
    err_dtype = None if err is None else DTYPE_CODES[err.dtype.name]
    emu.run(_launch.swizzle_quantize(DTYPE_CODES[x.dtype.name], x.ctypes.data, q.ctypes.data, params.ctypes.data,
                                     x.size, groups, bits, sym, LAYOUT["pipeline"], LAYOUT["nodes"],
                                     LAYOUT["devices_per_node"], 0 if err is None else err.ctypes.data, err_dtype,
                                     beta, max_grid))
    return q.view(np.int8), params


def emulated_reduction(emu, q_in, p_in, in_groups, groups, bits, sym, dpn, half=False, err=None, beta=0.0,
                       max_grid=_launch.MAX_GRID):
    per = 8 // bits if 8 % bits == 0 else 1
    n = q_in.size // dpn * per
    q = np.full(q_in.size // dpn, 0x5A, np.uint8)
    params = np.full((groups, 1 if sym else 2), np.nan, np.float32)
    err_dtype = None if err is None else DTYPE_CODES[err.dtype.name]
    emu.run(_launch.quantized_reduction(q_in.ctypes.data, p_in.ctypes.data, q.ctypes.data, params.ctypes.data, n,
                                        in_groups, groups, dpn, bits, sym, half,
                                        0 if err is None else err.ctypes.data, err_dtype, beta, max_grid))
    return q.view(np.int8), params


def same(a, b):
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    assert bits_ref.same_bits(a, b), bits_ref.first_difference(a, b)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("dtype", DTYPE_CODES)
def test_swizzle_quantize(emu, dtype, sym, case):
    numel, groups, bits = CASES[case]
    x = sample(dtype, numel, numel)
    q, p = emulated_swizzle(emu, x, groups, bits, sym, max_grid=3)
    q_cpu, p_cpu = dsquant.swizzle_quantize(x, groups, bits, symmetric=sym, **LAYOUT)
    same(q, q_cpu)
    same(p, p_cpu)
    q_ref, p_ref = zref.swizzle_ref(x, groups, bits, sym, 1, LAYOUT["nodes"], LAYOUT["devices_per_node"])
    same(q.view(np.uint8), np.asarray(q_ref).view(np.uint8))
    same(p, p_ref)


@pytest.mark.parametrize("err_dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_loco_swizzle_quantize(emu, dtype, sym, err_dtype):
    numel, groups, bits = CASES["S3b4"]
    x = sample(dtype, numel, 5)
    err0 = (np.random.default_rng(1).standard_normal(numel) * 0.1).astype(ref.DTYPES[err_dtype])
    err_emu, err_cpu = err0.copy(), err0.copy()
    q, p = emulated_swizzle(emu, x, groups, bits, sym, err_emu, 0.75)
    q_cpu, p_cpu = dsquant.loco_swizzle_quantize(x, err_cpu, 0.75, groups, bits, symmetric=sym, **LAYOUT)
    same(q, q_cpu)
    same(p, p_cpu)
    same(err_emu, err_cpu)


def slabs(bits, sym, dpn, numel, in_groups, seed):
    x = sample("float32", numel * dpn, seed)
    return dsquant.quantize(x, in_groups, bits, symmetric=sym)


@pytest.mark.parametrize("half", [False, True], ids=["f32sum", "f16sum"])
@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("case", CASES)
def test_quantized_reduction(emu, case, sym, half):
    numel, groups, bits = CASES[case]
    dpn = 2
    q_in, p_in = slabs(bits, sym, dpn, numel, 2 * groups, numel)
    q_in, p_in = np.asarray(q_in), np.asarray(p_in)
    q, p = emulated_reduction(emu, q_in, p_in, 2 * groups, groups, bits, sym, dpn, half, max_grid=2)
    q_cpu, p_cpu = dsquant.quantized_reduction(q_in, p_in, 2 * groups, groups, bits, symmetric=sym,
                                               devices_per_node=dpn, half_accumulate=half)
    same(q, q_cpu)
    same(p, p_cpu)
    q_ref, p_ref = zref.reduction_ref(q_in, p_in, 2 * groups, groups, bits, sym, dpn, half)
    same(q.view(np.uint8), np.asarray(q_ref).view(np.uint8))
    same(p, p_ref)


@pytest.mark.parametrize("err_dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
def test_loco_quantized_reduction(emu, sym, err_dtype):
    numel, groups, bits = CASES["S5b2"]
    dpn = 2
    q_in, p_in = slabs(bits, sym, dpn, numel, 2 * groups, 3)
    q_in, p_in = np.asarray(q_in), np.asarray(p_in)
    err0 = (np.random.default_rng(2).standard_normal(numel) * 0.1).astype(ref.DTYPES[err_dtype])
    err_emu, err_cpu = err0.copy(), err0.copy()
    q, p = emulated_reduction(emu, q_in, p_in, 2 * groups, groups, bits, sym, dpn, err=err_emu, beta=0.5)
    q_cpu, p_cpu = dsquant.loco_quantized_reduction(q_in, p_in, err_cpu, 0.5, 2 * groups, groups, bits,
                                                    symmetric=sym, devices_per_node=dpn)
    same(q, q_cpu)
    same(p, p_cpu)
    same(err_emu, err_cpu)
