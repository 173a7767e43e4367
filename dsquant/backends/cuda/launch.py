"""Launch plans for the kernels of ``cuda/*.cu``: which instantiation, grid, block and arguments
an operation needs. Pure Python (no CuPy, no GPU), so the plans can also be executed by the CPU
emulation of the kernels in the tests.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...core import dtypes
from ...core.formats import codes_per_byte
from . import kernels as K

MAX_THREADS = 256            # DSQ_MAX_THREADS in cuda/dsq_blocks.cuh (the kernels' __launch_bounds__)
MAX_GRID = 1 << 20           # grid-stride loops cover the rest
CHUNK_STEPS = 8              # chunk = MAX_THREADS · CHUNK_UNITS · N · CHUNK_STEPS elements
_FLOAT16 = dtypes.FLOAT16.code


@dataclass(frozen=True)
class Launch:
    kernel: str              # name expression (a key of kernels.MODULES[...])
    grid: int
    block: int
    args: tuple              # NumPy scalars, in the kernel's parameter order


def _ptr(address: int) -> np.uint64:
    return np.uint64(address)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def resident_shape(dtype: int, group_size: int):
    """(units per thread R, team size) when a group fits in the registers of one block, else None."""
    units = _cdiv(group_size, K.UNIT_ELEMENTS[dtype])
    per_thread = 1 if units < 4 else 4
    team = _pow2_at_least(_cdiv(units, per_thread))
    return (per_thread, team) if team <= MAX_THREADS else None


def _chunk(dtype: int) -> int:
    """Elements per chunk of a group too large for one block."""
    return MAX_THREADS * K.CHUNK_UNITS * K.UNIT_ELEMENTS[dtype] * CHUNK_STEPS


def keys_nbytes(dtype: int, numel: int, groups: int) -> int:
    """Scratch bytes the plan needs for per-group statistics keys (0 in the resident regime)."""
    if numel == 0 or resident_shape(dtype, numel // groups) is not None:
        return 0
    return 3 * groups * K.KEY_BYTES[dtype]


def fake_quantize(dtype: int, src: int, dst: int, numel: int, groups: int, bits: int, symmetric: bool,
                  stochastic: bool, seed: int, offset: int, keys: int = 0,
                  max_grid: int = MAX_GRID) -> list[Launch]:
    """Launches that fake-quantize `numel` contiguous elements at `src` into `dst` (may equal
    `src`). `keys` points to keys_nbytes(...) bytes of scratch when that is not 0."""
    if numel == 0:
        return []
    size = numel // groups
    tail = (np.int32(bits), np.uint64(seed), np.uint64(offset))
    shape = resident_shape(dtype, size)
    if shape is not None:
        per_thread, team = shape
        block = team if team > 32 else MAX_THREADS
        grid = min(_cdiv(groups, block // team), max_grid)
        name = K.fake_resident(dtype, symmetric, stochastic, per_thread)
        args = (_ptr(src), _ptr(dst), np.int64(size), np.int64(groups), np.int32(team)) + tail
        return [Launch(name, grid, block, args)]
    if not keys:
        raise ValueError("groups this large need scratch for their statistics (keys_nbytes)")
    items = groups * _cdiv(size, _chunk(dtype))
    common = (np.int64(size), np.int64(groups), np.int64(_chunk(dtype)))
    return [
        Launch(K.stats_clear(dtype), min(_cdiv(groups, MAX_THREADS), max_grid), MAX_THREADS,
               (_ptr(keys), np.int64(groups))),
        Launch(K.stats_chunks(dtype, symmetric), min(items, max_grid), MAX_THREADS,
               (_ptr(src), _ptr(keys)) + common),
        Launch(K.fake_chunks(dtype, symmetric, stochastic), min(items, max_grid), MAX_THREADS,
               (_ptr(src), _ptr(dst), _ptr(keys)) + common + tail),
    ]


# ------------------------------------------------------------------------------ integer codes
def _has_seams(numel: int, groups: int, bits: int) -> bool:
    """Whether some code byte holds codes of two groups (see int_quant_seams in cuda/dsq_int.cu)."""
    return groups > 1 and (numel // groups) % codes_per_byte(bits) != 0


def int_keys_nbytes(dtype: int, numel: int, groups: int, bits: int) -> int:
    """Scratch bytes a quantize plan needs for per-group statistics keys: groups too large for one
    block, or group boundaries inside code bytes; else 0."""
    chunked = resident_shape(dtype, numel // groups) is None
    return 3 * groups * K.KEY_BYTES[dtype] if chunked or _has_seams(numel, groups, bits) else 0


def quantize(dtype: int, src: int, q: int, params: int, numel: int, groups: int, bits: int, symmetric: bool,
             keys: int = 0, max_grid: int = MAX_GRID) -> list[Launch]:
    """Launches that write the codes of `numel` contiguous elements at `src` to `q` and their
    params to `params` (float32 [groups, 1 or 2]). `keys` points to int_keys_nbytes(...) bytes of
    scratch when that is not 0. With no elements the params of the empty groups are still written."""
    per = codes_per_byte(bits)
    if numel % per:
        raise ValueError(f"{numel} elements do not fill whole bytes of {per} {bits}-bit codes")
    if int_keys_nbytes(dtype, numel, groups, bits) and not keys:
        raise ValueError("these groups need scratch for their statistics (int_keys_nbytes)")
    size = numel // groups
    seams = _has_seams(numel, groups, bits)
    shape = resident_shape(dtype, size)
    if shape is not None:
        per_thread, team = shape
        block = team if team > 32 else MAX_THREADS
        plan = [Launch(K.int_quant_resident(dtype, symmetric, per, per_thread),
                       min(_cdiv(groups, block // team), max_grid), block,
                       (_ptr(src), _ptr(q), _ptr(params), _ptr(keys if seams else 0), np.int64(size),
                        np.int64(groups), np.int32(team), np.int32(bits)))]
    else:
        items = groups * _cdiv(size, _chunk(dtype))
        common = (np.int64(size), np.int64(groups), np.int64(_chunk(dtype)))
        plan = [
            Launch(K.stats_clear(dtype), min(_cdiv(groups, MAX_THREADS), max_grid), MAX_THREADS,
                   (_ptr(keys), np.int64(groups))),
            Launch(K.stats_chunks(dtype, symmetric), min(items, max_grid), MAX_THREADS,
                   (_ptr(src), _ptr(keys)) + common),
            Launch(K.int_quant_chunks(dtype, symmetric, per), min(items, max_grid), MAX_THREADS,
                   (_ptr(src), _ptr(q), _ptr(params), _ptr(keys)) + common + (np.int32(bits),)),
        ]
    if seams:
        plan.append(Launch(K.int_quant_seams(dtype, symmetric), min(_cdiv(groups - 1, MAX_THREADS), max_grid),
                           MAX_THREADS, (_ptr(src), _ptr(q), _ptr(keys), np.int64(size), np.int64(groups),
                                         np.int32(per), np.int32(bits))))
    return plan


def _dequant(kernel: str, dtype: int, q: int, pa: int, pb: int, out: int, numel: int, groups: int,
             max_grid: int) -> list[Launch]:
    """The one launch of dequant_codes: a team per group, or a block per chunk of a large group."""
    if numel == 0:
        return []
    size = numel // groups
    shape = resident_shape(dtype, size)
    chunk, team = (size, shape[1]) if shape is not None else (_chunk(dtype), MAX_THREADS)
    block = team if team > 32 else MAX_THREADS
    items = groups * _cdiv(size, chunk)
    return [Launch(kernel, min(_cdiv(items, block // team), max_grid), block,
                   (_ptr(q), _ptr(pa), _ptr(pb), _ptr(out), np.int64(size), np.int64(groups), np.int64(chunk),
                    np.int32(team)))]


def dequantize(dtype: int, q: int, params: int, out: int, numel: int, groups: int, bits: int, symmetric: bool,
               max_grid: int = MAX_GRID) -> list[Launch]:
    """Launches that write `numel` values of `dtype` to `out` from the codes at `q` and the float32
    params [groups, 1 (symmetric) or 2] at `params`."""
    kernel = K.dequant_signed(dtype, symmetric, codes_per_byte(bits))
    return _dequant(kernel, dtype, q, params, 0, out, numel, groups, max_grid)


def dequantize_unsigned_half(q: int, scale: int, minimum: int, out: int, num_group: int, group_size: int, bits: int,
                             max_grid: int = MAX_GRID) -> list[Launch]:
    """Launches of DeepSpeed's experimental dequantization: float16 [num_group, group_size] at `out`
    from unsigned `bits`-bit codes at `q` and float16 scale and minimum per group."""
    kernel = K.dequant_unsigned_half(codes_per_byte(bits))
    return _dequant(kernel, _FLOAT16, q, scale, minimum, out, num_group * group_size, num_group, max_grid)


def quantize_given(dtype: int, src: int, params: int, q: int, numel: int, groups: int, bits: int, symmetric: bool,
                   max_grid: int = MAX_GRID) -> list[Launch]:
    """Launches of integer quantization with the caller's params (cuda/dsq_static.cu): a thread per code byte."""
    per = codes_per_byte(bits)
    if numel == 0:
        return []
    grid = min(_cdiv(numel // per, MAX_THREADS), max_grid)
    args = (_ptr(src), _ptr(params), _ptr(q), np.int64(numel), np.int64(numel // groups), np.int32(bits))
    return [Launch(K.int_quant_given(dtype, symmetric, per), grid, MAX_THREADS, args)]


# ------------------------------------------------------------------------------ ZeRO++ ops
def _zeropp_grid(numel: int, groups: int, bits: int, max_grid: int) -> tuple[int, int]:
    """(run, grid): a block quantizes `run` groups that fill whole code bytes (cuda/dsq_zeropp.cu)."""
    per = codes_per_byte(bits)
    run = per // math.gcd(numel // groups, per)
    return run, min(groups // run, max_grid)


def swizzle_quantize(dtype: int, src: int, q: int, params: int, numel: int, groups: int, bits: int,
                     symmetric: bool, pipeline: int, nodes: int, dpn: int, err: int = 0,
                     err_dtype: int | None = None, beta: float = 0.0, max_grid: int = MAX_GRID) -> list[Launch]:
    """swizzle_quantize (LoCo when err_dtype is not None: `err` holds numel elements, output order).
    With no elements the params of the (one, empty) group are still written."""
    run, grid = _zeropp_grid(numel, groups, bits, max_grid)
    args = (_ptr(src), _ptr(q), _ptr(params), _ptr(err), np.float32(beta), np.int64(numel), np.int64(groups),
            np.int64(run), np.int64(pipeline), np.int64(nodes), np.int64(dpn), np.int32(bits), np.bool_(symmetric))
    return [Launch(K.swizzle_quant(dtype, err_dtype), grid, MAX_THREADS, args)]


def quantized_reduction(q_in: int, params_in: int, q: int, params: int, numel: int, in_groups: int, groups: int,
                        devices: int, bits: int, symmetric: bool, half_accumulate: bool, err: int = 0,
                        err_dtype: int | None = None, beta: float = 0.0, max_grid: int = MAX_GRID) -> list[Launch]:
    """quantized_reduction of `devices` slabs into `numel` values (LoCo when err_dtype is not None).
    With no values the params of the (one, empty) out-group are still written."""
    run, grid = _zeropp_grid(numel, groups, bits, max_grid)
    args = (_ptr(q_in), _ptr(params_in), _ptr(q), _ptr(params), _ptr(err), np.float32(beta), np.int64(numel),
            np.int64(in_groups), np.int64(groups), np.int64(devices), np.int64(run), np.int32(bits),
            np.bool_(symmetric), np.bool_(half_accumulate))
    return [Launch(K.quant_reduce(err_dtype), grid, MAX_THREADS, args)]
