"""The CUDA kernels of cuda/dsq_fake.cu, run on the CPU by the emulation in tests/emu (blocks one
after another, threads as fibers meeting at real barriers), with the launch plans the CUDA
backend uses (dsquant.backends.cuda.launch): every regime, dtype, scheme and rounding, odd sizes, misaligned
and in-place buffers, random-stream offsets and grid-stride loops give the CPU path's bits.

What this cannot check is the device-only code of cuda/dsq_math.cuh (the DSQ_GPU_ISA paths):
the emulation compiles the host branch. tests/test_gpu.py covers those on a GPU."""
import numpy as np
import pytest

import dsquant
import reference as ref
from dsquant.core import dtypes
from dsquant.backends.cpu import signatures
from dsquant.backends.cuda import launch as _launch
from _cuda_emu import Emulator
from _optional import require
from helpers import check_exact, sample

ml_dtypes = require("ml_dtypes")

DTYPE_CODES = {d.name: d.code for d in dtypes.FLOAT_DTYPES}
SCHEMES = {"sym": True, "asym": False}
ROUNDING = {"nearest": False, "stochastic": True}
# (numel, groups) covering each regime of _launch.fake_quantize for every dtype: one-thread teams
# (S = 1, 3, 8), odd S (scalar edges), warp teams, block teams (S = 1000, 4096), and groups too large
# for one block: one chunk per group with misaligned starts (S = 9001), several chunks (S = 70001).
SHAPES = {"S1": (37, 37), "S3": (150, 50), "S7": (280, 40), "S8": (512, 64), "S128": (2560, 20),
          "S1000": (3000, 3), "S4096": (8192, 2), "S9001": (18002, 2), "S70001": (70001, 1)}
BITS = {"S1": 8, "S3": 2, "S7": 5, "S8": 4, "S128": 8, "S1000": 3, "S4096": 16, "S9001": 6, "S70001": 8}






def cpu(x, groups, bits, symmetric, stochastic, seed=0, offset=0):
    out = np.empty_like(x)
    signatures.FAKE_QUANTIZE(DTYPE_CODES[x.dtype.name], in_=x.ctypes.data, out=out.ctypes.data, n=x.size,
                             groups=groups, bits=bits, symmetric=symmetric, stochastic=stochastic, seed=seed,
                             offset=offset, threads=1)
    return out


def emulated(emu, x, out, groups, bits, symmetric, stochastic, seed=0, offset=0, max_grid=_launch.MAX_GRID):
    dtype = DTYPE_CODES[x.dtype.name]
    nbytes = _launch.keys_nbytes(dtype, x.size, groups)
    keys = np.zeros(max(nbytes, 1), np.uint8)
    plan = _launch.fake_quantize(dtype, x.ctypes.data, out.ctypes.data, x.size, groups, bits, symmetric,
                                 stochastic, seed, offset, keys.ctypes.data if nbytes else 0, max_grid)
    emu.run(plan)
    return plan


def guarded(n, dtype, guard=16):
    """An output of n elements inside a poisoned buffer, to catch writes past either end."""
    full = np.full(n + 2 * guard, 0x5A5A5A5A5A5A5A5A, np.uint64).view(np.uint8)[: (n + 2 * guard) * dtype.itemsize]
    full = full.view(dtype)
    return full, full[guard:guard + n]




@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rounding", ROUNDING)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", DTYPE_CODES)
def test_matches_cpu_path(emu, dtype, scheme, rounding, shape):
    numel, groups = SHAPES[shape]
    bits, sym, sr = BITS[shape], SCHEMES[scheme], ROUNDING[rounding]
    x = sample(dtype, numel, seed=numel)
    full, out = guarded(numel, x.dtype)
    before = full.copy()
    emulated(emu, x, out, groups, bits, sym, sr, seed=11)
    check_exact(out, cpu(x, groups, bits, sym, sr, seed=11))
    guard = np.ones(full.size, bool)
    guard[16:16 + numel] = False
    assert ref.same_bits(full[guard], before[guard]), "a kernel wrote outside its output"


@pytest.mark.parametrize("dtype", DTYPE_CODES)
def test_shapes_cover_every_regime(dtype):
    """SHAPES reach one-thread teams, warp teams, block teams and the chunked kernels."""
    seen = set()
    for numel, groups in SHAPES.values():
        plan = _launch.fake_quantize(DTYPE_CODES[dtype], 64, 64, numel, groups, 8, True, False, 0, 0, keys=64)
        if plan[-1].kernel.startswith("dsq::fake_chunks"):
            seen.add("chunks")
        else:
            team = int(plan[0].args[4])
            seen.add("thread" if team == 1 else "warp" if team <= 32 else "block")
    assert seen == {"thread", "warp", "block", "chunks"}


@pytest.mark.parametrize("shape", ["S7", "S128", "S4096", "S9001", "S70001"])
@pytest.mark.parametrize("dtype", DTYPE_CODES)
def test_in_place_and_misaligned(emu, dtype, shape):
    numel, groups = SHAPES[shape]
    base = sample(dtype, numel + 1, seed=3)
    x = base[1:]                                     # 2, 4 or 8 bytes past a 16-byte boundary
    expected = cpu(np.ascontiguousarray(x), groups, 7, False, True, seed=5, offset=3)
    out = np.empty_like(x)                            # aligned: source and destination never align together
    emulated(emu, x, out, groups, 7, False, True, seed=5, offset=3)
    check_exact(out, expected)
    emulated(emu, x, x, groups, 7, False, True, seed=5, offset=3)   # in place: equally misaligned
    check_exact(x, expected)


@pytest.mark.parametrize("offset", [1, 2, 3, 4, (1 << 40) + 1])
@pytest.mark.parametrize("shape", ["S3", "S128", "S70001"])
def test_random_stream_offsets(emu, shape, offset):
    numel, groups = SHAPES[shape]
    for dtype in ("float16", "float64"):
        x = sample(dtype, numel, seed=4)
        out = np.empty_like(x)
        emulated(emu, x, out, groups, 4, True, True, seed=(1 << 63) + 9, offset=offset)
        check_exact(out, cpu(x, groups, 4, True, True, seed=(1 << 63) + 9, offset=offset))


@pytest.mark.parametrize("shape", ["S3", "S128", "S70001"])
def test_random_stream_positions_wrap_modulo_2_64(emu, shape):
    """Stream positions are offset + i modulo 2^64 (the global stream wraps its offset). Compared
    with the independent reference (the CPU path's wrap is tested in test_fake_quantize)."""
    numel, groups = SHAPES[shape]
    x = sample("float32", numel, seed=4)
    out = np.empty_like(x)
    emulated(emu, x, out, groups, 4, False, True, seed=3, offset=(1 << 64) - 6)
    check_exact(out, ref.fake_quantize(x, groups, 4, False, True, seed=3, offset=(1 << 64) - 6))


@pytest.mark.parametrize("max_grid", [1, 2])
@pytest.mark.parametrize("shape", ["S1", "S7", "S128", "S1000", "S4096", "S9001", "S70001"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_grid_stride_loops(emu, dtype, shape, max_grid):
    """Fewer blocks than work items: blocks loop, with barriers and shared memory reused inside
    the loop (S1000 and S4096 in float32 are block teams)."""
    numel, groups = SHAPES[shape]
    x = sample(dtype, numel, seed=6)
    for sym in (True, False):
        out = np.empty_like(x)
        plan = emulated(emu, x, out, groups, 8, sym, False, max_grid=max_grid)
        assert all(launch.grid <= max_grid for launch in plan)
        check_exact(out, cpu(x, groups, 8, sym, False))


@pytest.mark.parametrize("shape", ["S8", "S1000", "S9001"])
@pytest.mark.parametrize("dtype", DTYPE_CODES)
def test_special_values(emu, dtype, shape):
    numel, groups = SHAPES[shape]
    info = ml_dtypes.finfo(ref.DTYPES[dtype])
    x = sample(dtype, numel, seed=7)
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, info.max, -info.max, info.smallest_subnormal,
                         -info.tiny], dtype=ref.DTYPES[dtype])
    x[:: max(1, numel // 40)][: 40] = np.resize(specials, min(40, len(x[:: max(1, numel // 40)])))
    x[: numel // groups] = np.nan if numel // groups > 1 else x[: numel // groups]   # a group without finite values
    for sym in (True, False):
        out = np.empty_like(x)
        emulated(emu, x, out, groups, 8, sym, True, seed=1)
        check_exact(out, cpu(x, groups, 8, sym, True, seed=1))


def test_public_api_agrees_with_the_emulated_kernels(emu):
    """The CPU path itself is what the kernels are compared with: tie it to the public function."""
    x = sample("float32", 3000, seed=8)
    out = np.empty_like(x)
    emulated(emu, x, out, 3, 8, True, True, seed=42)
    check_exact(out, dsquant.fake_quantize(x, 3, 8, stochastic=True, seed=42))


BAD_KERNELS = r"""
namespace bad {
// thread 0 leaves before the barrier the others wait at
__global__ void early_exit(int* p) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  p[threadIdx.x] = 1;
}
// lanes 16..31 skip a shuffle that lanes 0..15 wait in
__global__ void partial_shuffle(int* p) {
  if ((threadIdx.x & 31) < 16) p[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
}
__global__ void fine(int* p) {
  __syncthreads();
  p[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
}
}
"""


def test_emulation_detects_skipped_barriers(tmp_path):
    (tmp_path / "bad.cu").write_text(BAD_KERNELS)
    bad = Emulator(tmp_path, names=["bad::early_exit", "bad::partial_shuffle", "bad::fine"],
                   includes=["bad.cu"], extra_include_dirs=[tmp_path])
    buf = np.zeros(64, np.int32)
    args = (np.uint64(buf.ctypes.data),)
    for name in ("bad::early_exit", "bad::partial_shuffle"):
        with pytest.raises(RuntimeError, match="never reach"):
            bad.launch(name, 1, 64, args)
    bad.launch("bad::fine", 1, 64, args)
    assert list(buf[:4]) == [1, 0, 3, 2]
