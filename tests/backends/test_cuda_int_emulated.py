"""The integer kernels of cuda/dsq_int.cu (quantize, dequantize, the experimental unsigned float16
dequantization), run on the CPU by the emulation in tests/emu with the launch plans the CUDA
backend uses (dsquant.backends.cuda.launch), give the CPU path's bytes: every regime, dtype, scheme, packing,
group boundaries inside code bytes, NaN and ±Inf, misaligned buffers and grid-stride loops; and
no kernel writes outside its outputs.

As in test_cuda_emulated.py, the device-only code of cuda/dsq_math.cuh (DSQ_GPU_ISA) is not run
here; tests/backends/test_gpu.py and the gpu tests of tests/ops/test_quantize.py cover it on a GPU."""
import numpy as np
import pytest

import dsquant
import reference as ref
from dsquant.core import dtypes
from dsquant.backends.cuda import launch as _launch
from dsquant.ops.integer import dequantize_unsigned_half
from _optional import require
from helpers import check_exact

ml_dtypes = require("ml_dtypes")

DTYPE_CODES = {d.name: d.code for d in dtypes.FLOAT_DTYPES}
SCHEMES = {"sym": True, "asym": False}
BITS = [2, 3, 4, 8]
# (numel, groups): S = 1, 2, 3 (several groups share a byte of 2- and 4-bit codes), odd S = 13 and 37,
# S = 128, S = 4096 (block teams), S = 9001 (chunked in every dtype, odd: boundaries inside
# bytes), S = 20002 (beyond DeepSpeed's 16,384), S = 70001 (several chunks per group)
SHAPES = {"S1": (40, 40), "S2": (40, 20), "S3": (48, 16), "S13": (13 * 12, 12), "S37": (37 * 8, 8),
          "S128": (128 * 20, 20), "S4096": (4096 * 2, 2), "S9001": (9001 * 4, 4), "S20002": (20002 * 2, 2),
          "S70001": (70001 * 4, 4)}
GUARD = 64   # poisoned bytes on either side of every output




def sample(dtype, numel, seed, specials=True):
    """Normal data with a different scale per block of 50, NaN and ±Inf sprinkled in, and a first
    group-sized run of NaN (a group without finite elements)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(numel) * np.exp(rng.uniform(-4, 4, size=numel // 50 + 1)).repeat(50)[:numel]
    if specials and numel >= 40:
        where = rng.choice(numel, size=max(2, numel // 100), replace=False)
        x[where] = rng.choice([np.nan, np.inf, -np.inf, 0.0, -0.0], size=where.size)
    return x.astype(ref.DTYPES[dtype])


class Guarded:
    """`nbytes` of output inside poisoned bytes, `offset` bytes past a 256-byte boundary."""

    def __init__(self, nbytes, offset=0):
        self.full = np.full(nbytes + 2 * GUARD + 256, 0xA5, np.uint8)
        start = -self.full.ctypes.data % 256 + GUARD + offset
        self.start, self.nbytes = start, nbytes
        self.before = self.full.copy()
        self.data = self.full[start:start + nbytes]

    @property
    def ptr(self):
        return self.full.ctypes.data + self.start

    def check_guards(self):
        outside = np.ones(self.full.size, bool)
        outside[self.start:self.start + self.nbytes] = False
        assert np.array_equal(self.full[outside], self.before[outside]), "a kernel wrote outside its output"


def emulated_quantize(emu, x, groups, bits, symmetric, max_grid=_launch.MAX_GRID, q_offset=0):
    dtype = DTYPE_CODES[x.dtype.name]
    per = dsquant.core.formats.codes_per_byte(bits)
    q = Guarded(x.size // per, q_offset)
    params = Guarded(groups * (1 if symmetric else 2) * 4)
    nbytes = _launch.int_keys_nbytes(dtype, x.size, groups, bits)
    keys = np.zeros(max(nbytes, 1), np.uint8)
    emu.run(_launch.quantize(dtype, x.ctypes.data, q.ptr, params.ptr, x.size, groups, bits, symmetric,
                             keys.ctypes.data if nbytes else 0, max_grid))
    q.check_guards()
    params.check_guards()
    return q.data.copy(), params.data.view(np.float32).reshape(groups, -1).copy()


def emulated_dequantize(emu, codes, params, bits, out_dtype, max_grid=_launch.MAX_GRID, out_offset=0):
    """codes: uint8 bytes (any alignment); params: float32 [groups, 1 or 2]."""
    dtype = ref.DTYPES[out_dtype]
    numel = codes.size * dsquant.core.formats.codes_per_byte(bits)
    out = Guarded(numel * dtype.itemsize, out_offset)
    emu.run(_launch.dequantize(DTYPE_CODES[out_dtype], codes.ctypes.data, params.ctypes.data, out.ptr, numel,
                               params.shape[0], bits, params.shape[1] == 1, max_grid))
    out.check_guards()
    return out.data.view(dtype).copy()




def cpu_quantize(x, groups, bits, symmetric):
    q, params = dsquant.quantize(x, groups, bits, symmetric=symmetric)
    return q.view(np.uint8).reshape(-1), params


# ------------------------------------------------------------------------------ the grid
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", DTYPE_CODES)
def test_quantize_and_dequantize_match_cpu_path(emu, dtype, scheme, bits, shape):
    numel, groups = SHAPES[shape]
    sym = SCHEMES[scheme]
    x = sample(dtype, numel, seed=numel + bits)
    x[: numel // groups] = np.nan if numel // groups > 1 else x[: numel // groups]
    q, params = emulated_quantize(emu, x, groups, bits, sym)
    q_cpu, params_cpu = cpu_quantize(x, groups, bits, sym)
    check_exact(q, q_cpu)
    check_exact(params, params_cpu)
    out_dtype = list(DTYPE_CODES)[(BITS.index(bits) + len(shape)) % 4]   # every output dtype meets every shape
    check_exact(emulated_dequantize(emu, q_cpu, params_cpu, bits, out_dtype),
                dsquant.dequantize(q_cpu, params_cpu, bits, dtype=out_dtype))


@pytest.mark.parametrize("dtype", DTYPE_CODES)
def test_shapes_cover_every_regime(dtype):
    """SHAPES reach one-thread, warp and block teams, the chunked kernels, and seams in both."""
    seen = set()
    for numel, groups in SHAPES.values():
        for bits in BITS:
            plan = _launch.quantize(DTYPE_CODES[dtype], 64, 64, 64, numel, groups, bits, True, keys=64)
            kernels = [p.kernel.split("<")[0] for p in plan]
            if "dsq::int_quant_chunks" in kernels:
                regime = "chunks"
            else:
                team = int(plan[0].args[6])
                regime = "thread" if team == 1 else "warp" if team <= 32 else "block"
            seen.add(regime + ("+seams" if "dsq::int_quant_seams" in kernels else ""))
    assert {"thread", "thread+seams", "warp", "warp+seams", "block", "chunks", "chunks+seams"} <= seen


# ------------------------------------------------------------------------------ layouts
@pytest.mark.parametrize("shape", ["S3", "S13", "S128", "S4096", "S9001"])
@pytest.mark.parametrize("dtype", DTYPE_CODES)
def test_misaligned_buffers(emu, dtype, shape):
    """An input one element past a 16-byte boundary, and codes and values at odd addresses: every
    access falls back to elements and bytes one by one."""
    numel, groups = SHAPES[shape]
    base = sample(dtype, numel + 1, seed=3)
    x = base[1:]
    for bits in (2, 4, 8):
        q_cpu, params_cpu = cpu_quantize(np.ascontiguousarray(x), groups, bits, False)
        q, params = emulated_quantize(emu, x, groups, bits, False)
        check_exact(q, q_cpu)
        check_exact(params, params_cpu)
        codes = np.concatenate([np.zeros(1, np.uint8), q_cpu])[1:]   # one byte past an aligned address
        expected = dsquant.dequantize(q_cpu, params_cpu, bits, dtype=dtype)
        check_exact(emulated_dequantize(emu, codes, params_cpu, bits, dtype, out_offset=ref.DTYPES[dtype].itemsize),
                    expected)


@pytest.mark.parametrize("max_grid", [1, 2])
@pytest.mark.parametrize("shape", ["S1", "S3", "S128", "S4096", "S9001", "S70001"])
def test_grid_stride_loops(emu, shape, max_grid):
    """Fewer blocks than work items: blocks loop (barriers and shared memory reused in the loop)."""
    numel, groups = SHAPES[shape]
    for dtype, bits in (("bfloat16", 4), ("float32", 2)):
        x = sample(dtype, numel, seed=6)
        for sym in (True, False):
            q, params = emulated_quantize(emu, x, groups, bits, sym, max_grid=max_grid)
            q_cpu, params_cpu = cpu_quantize(x, groups, bits, sym)
            check_exact(q, q_cpu)
            check_exact(params, params_cpu)
            check_exact(emulated_dequantize(emu, q_cpu, params_cpu, bits, dtype, max_grid=max_grid),
                        dsquant.dequantize(q_cpu, params_cpu, bits, dtype=dtype))


# ------------------------------------------------------------------------------ values
@pytest.mark.parametrize("shape", ["S2", "S128", "S9001"])
@pytest.mark.parametrize("dtype", DTYPE_CODES)
def test_special_values(emu, dtype, shape):
    """Zeros, ±max, subnormals, NaN, ±Inf, groups of only NaN or Inf, constant groups."""
    numel, groups = SHAPES[shape]
    size = numel // groups
    info = ml_dtypes.finfo(ref.DTYPES[dtype])
    x = sample(dtype, numel, seed=7)
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, info.max, -info.max, info.smallest_subnormal,
                         -info.tiny], dtype=ref.DTYPES[dtype])
    x[:: max(1, numel // 40)][:40] = np.resize(specials, min(40, len(x[:: max(1, numel // 40)])))
    x[size:2 * size] = np.inf
    if groups > 3:
        x[2 * size:3 * size] = 1.5
    for bits in BITS:
        for sym in (True, False):
            q, params = emulated_quantize(emu, x, groups, bits, sym)
            q_cpu, params_cpu = cpu_quantize(x, groups, bits, sym)
            check_exact(q, q_cpu)
            check_exact(params, params_cpu)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("out_dtype", DTYPE_CODES)
def test_dequantize_every_code_byte(emu, bits, out_dtype):
    """All 256 byte values under params that include zero, subnormal, huge, infinite and NaN steps
    (NaN results are the canonical NaN on both paths)."""
    codes = np.tile(np.arange(256, dtype=np.uint8), 8)
    groups = 8
    p0 = np.array([0.5, 0.0, 1e-45, 3e38, np.inf, np.nan, -0.25, 7.0], np.float32)
    p1 = np.array([0.0, -1.0, np.inf, -3e38, 1.0, 2.0, np.nan, 1e-40], np.float32)
    for params in (p0.reshape(groups, 1), np.stack([p0, p1], axis=1)):
        check_exact(emulated_dequantize(emu, codes, params, bits, out_dtype),
                    dsquant.dequantize(codes, params, bits, dtype=out_dtype))


def test_empty_input_still_writes_params(emu):
    # the public API gives an empty input one group; the kernels fill any number of them
    for sym, row in ((True, [1.0]), (False, [1.0, 0.0])):
        q, params = emulated_quantize(emu, np.zeros(0, np.float16), 5, 4, sym)
        assert q.size == 0
        check_exact(params, np.array([row] * 5, np.float32))
        check_exact(emulated_quantize(emu, np.zeros(0, np.float16), 1, 4, sym)[1],
                    cpu_quantize(np.zeros(0, np.float16), 1, 4, sym)[1])
    assert _launch.dequantize(0, 64, 64, 64, 0, 5, 4, True) == []


def test_plan_refuses_a_ragged_last_byte():
    with pytest.raises(ValueError, match="whole bytes"):
        _launch.quantize(0, 64, 64, 64, 6, 2, 2, True)


# ------------------------------------------------------------------------------ unsigned float16
@pytest.mark.parametrize("num_group, group_size", [(1, 2), (37, 2), (6, 3), (64, 128), (3, 1000), (2, 8192),
                                                    (2, 70002)])
@pytest.mark.parametrize("bits", [4, 8])
def test_unsigned_half_matches_cpu_path(emu, bits, num_group, group_size):
    rng = np.random.default_rng(num_group * group_size + bits)
    n = num_group * group_size
    per = 8 // bits
    data = rng.integers(0, 256, size=n // per, dtype=np.uint8)
    scale = rng.uniform(0.5, 40, num_group).astype(np.float16)
    minimum = rng.uniform(-8, 8, num_group).astype(np.float16)
    specials = np.array([0.0, -0.0, np.inf, np.nan, 6e-8, 65504], np.float16)
    scale[: len(specials)] = specials[: num_group]
    minimum[::3] = np.resize(np.array([np.nan, -np.inf, 1e-7], np.float16), minimum[::3].size)
    for codes in (data, np.concatenate([np.zeros(1, np.uint8), data])[1:]):   # aligned and one byte past
        out = Guarded(n * 2)
        emu.run(_launch.dequantize_unsigned_half(codes.ctypes.data, scale.ctypes.data, minimum.ctypes.data, out.ptr,
                                                 num_group, group_size, bits))
        out.check_guards()
        expected = dequantize_unsigned_half(data, scale, minimum, num_group, group_size, bits)
        check_exact(out.data.view(np.float16).reshape(num_group, group_size), expected)

