"""The CPU backend: drives the OpenMP kernels of ``_cpu`` on host memory.

Registers its implementations with ``dsquant.core.registry`` for the device "cpu" (the CUDA
backend registers the same operations for "cuda"). Arguments arrive checked and resolved by
``dsquant.ops``; results are arrays of the caller's framework:

* ``fake_quantize(src, dst, groups, bits, symmetric, stochastic, seed, offset)``
* ``fake_quantize_inplace(op, groups, bits, symmetric, stochastic, seed, offset)``
* ``quantize(src, groups, bits, symmetric, q_shape) -> (q, params)``
* ``dequantize(codes, params, groups, bits, symmetric, dtype, shape, dst) -> array``
* ``dequantize_unsigned_half(codes, scale, minimum, num_group, group_size, bits) -> array``
"""
from __future__ import annotations

import math

from ...core import dtypes, registry, threads
from ...core.formats import codes_per_byte, params_shape
from ...interop import _array
from ...interop.operand import Operand
from . import _cpu, forksafe
from . import signatures as sig

_strided_copy = forksafe.guard(_cpu.strided_copy)   # safe to call in a forked child (forksafe.py)

_FLOAT16, _FLOAT32 = dtypes.FLOAT16.code, dtypes.FLOAT32.code


@registry.implements("num_threads", "cpu")
def num_threads() -> int:
    """CPU threads used by a call: DSQUANT_NUM_THREADS, else OpenMP's (OMP_NUM_THREADS)."""
    return threads.requested() or max(1, _cpu.max_threads())


@registry.implements("openmp_threads", "cpu")
def openmp_threads() -> int:
    """OpenMP's default thread count (OMP_NUM_THREADS, else the cores)."""
    return _cpu.max_threads()


@registry.implements("cpu_isa", "cpu")
def cpu_isa() -> str:
    """The kernels in use: "avx2" (AVX2 + FMA + F16C) or "baseline" (DSQUANT_CPU_BASELINE=1 forces it)."""
    return _cpu.isa()


@registry.implements("xla_handlers", "cpu")
def xla_handlers() -> dict[str, object]:
    """{XLA FFI target: PyCapsule}: the CPU kernels as XLA FFI handlers (xla_ffi.hpp), which
    dsquant/jax.py registers with jax.ffi.register_ffi_target."""
    handlers: dict[str, object] = _cpu.xla_handlers()
    return handlers


@registry.implements("xla_gpu_refusals", "cpu")
def xla_gpu_refusals() -> dict[str, object]:
    """{XLA FFI target: PyCapsule} for the CUDA platform: a handler that raises a clear error."""
    handlers: dict[str, object] = _cpu.xla_gpu_refusals()
    return handlers


def _run_fake(src_ptr, dst_ptr, t: _array.Tensor, groups, bits, symmetric, stochastic, seed, offset):
    sig.FAKE_QUANTIZE(t.dtype, in_=src_ptr, out=dst_ptr, n=t.numel, groups=groups, bits=bits, symmetric=symmetric,
                      stochastic=stochastic, seed=seed, offset=offset, threads=num_threads())


def _gather(t: _array.Tensor, dst_ptr: int) -> None:
    _strided_copy(t.data, t.strides, dst_ptr, _array.contiguous_strides(t.shape), t.shape,
                      t.itemsize, num_threads())


def _scatter(src_ptr: int, t: _array.Tensor) -> None:
    _strided_copy(src_ptr, _array.contiguous_strides(t.shape), t.data, t.strides, t.shape,
                      t.itemsize, num_threads())


def _contiguous(t: _array.Tensor):
    """(address of t's elements in C order, the copy that must stay alive or None)."""
    if t.is_c_contiguous:
        return t.data, None
    copy = _array.HostBuffer((t.numel * t.itemsize,), _array.DL_INT8)   # bytes enough for t
    _gather(t, copy.data)
    return copy.data, copy


def _result(like: Operand, shape, dtype: int, dst: Operand | None):
    """(address to write the result to, the new buffer or None when writing straight into dst)."""
    if dst is not None and dst.tensor.is_c_contiguous:
        return dst.tensor.data, None
    uint_view = dst is None and dtype == dtypes.BFLOAT16.code and like.adapter.bfloat16_as_bits
    buffer = _array.HostBuffer(shape, dtype, uint_view)
    return buffer.data, buffer


def _deliver(buffer, dst: Operand | None, like: Operand, dtype: int):
    """The caller's result: the new buffer wrapped in its framework, or dst (written back if needed)."""
    if dst is None:
        return like.adapter.from_host(buffer, dtypes.NAMES[dtype])
    if buffer is not None:
        _scatter(buffer.data, dst.tensor)
    return dst.obj


@registry.implements("fake_quantize", "cpu")
def fake_quantize(src: Operand, dst: Operand | None, groups, bits, symmetric, stochastic, seed, offset):
    t = src.tensor
    target, buffer = _result(src, t.shape, t.dtype, dst)
    if t.is_c_contiguous:
        _run_fake(t.data, target, t, groups, bits, symmetric, stochastic, seed, offset)
    else:
        _gather(t, target)           # the one contiguous copy, made in the result itself
        _run_fake(target, target, t, groups, bits, symmetric, stochastic, seed, offset)
    return _deliver(buffer, dst, src, t.dtype)


@registry.implements("fake_quantize_inplace", "cpu")
def fake_quantize_inplace(op: Operand, groups, bits, symmetric, stochastic, seed, offset) -> None:
    t = op.tensor
    if t.is_c_contiguous:
        _run_fake(t.data, t.data, t, groups, bits, symmetric, stochastic, seed, offset)
        return
    scratch = _array.HostBuffer(t.shape, t.dtype)
    _gather(t, scratch.data)
    _run_fake(scratch.data, scratch.data, t, groups, bits, symmetric, stochastic, seed, offset)
    _scatter(scratch.data, t)


# ------------------------------------------------------------------------------ integer codes
@registry.implements("quantize", "cpu")
def quantize(src: Operand, groups, bits, symmetric, q_shape):
    t = src.tensor
    q = _array.HostBuffer(q_shape, _array.DL_INT8)
    params = _array.HostBuffer(params_shape(groups, symmetric), _FLOAT32)
    data, _keep = _contiguous(t)
    sig.INT_QUANTIZE(t.dtype, in_=data, q=q.data, params=params.data, n=t.numel, groups=groups, bits=bits,
                     symmetric=symmetric, threads=num_threads())
    return src.adapter.from_host(q, "int8"), src.adapter.from_host(params, "float32")


@registry.implements("dequantize", "cpu")
def dequantize(codes: Operand, params: Operand, groups, bits, symmetric, dtype, shape, dst: Operand | None):
    q_ptr, _keep_q = _contiguous(codes.tensor)
    p_ptr, _keep_p = _contiguous(params.tensor)
    target, buffer = _result(codes, shape, dtype, dst)
    sig.INT_DEQUANTIZE(dtype, q=q_ptr, params=p_ptr, out=target, n=math.prod(shape), groups=groups, bits=bits,
                       symmetric=symmetric, threads=num_threads())
    return _deliver(buffer, dst, codes, dtype)


@registry.implements("dequantize_unsigned_half", "cpu")
def dequantize_unsigned_half(codes: Operand, scale: Operand, minimum: Operand, num_group, group_size, bits):
    q_ptr, _keep_q = _contiguous(codes.tensor)
    s_ptr, _keep_s = _contiguous(scale.tensor)
    m_ptr, _keep_m = _contiguous(minimum.tensor)
    out = _array.HostBuffer((num_group, group_size), _FLOAT16)
    sig.UINT_DEQUANTIZE_HALF(q=q_ptr, scale=s_ptr, minimum=m_ptr, out=out.data, num_group=num_group,
                             group_size=group_size, bits=bits, threads=num_threads())
    return codes.adapter.from_host(out, "float16")


# ------------------------------------------------------------------------------ ZeRO++ ops
def _error_buffer(err: Operand | None):
    """(address, dsquant dtype code) of a LoCo error buffer, (0, 0) without one."""
    return (err.tensor.data, err.tensor.dtype) if err is not None else (0, 0)


@registry.implements("swizzle_quantize", "cpu")
def swizzle_quantize(src: Operand, groups, bits, symmetric, pipeline, nodes, dpn, err: Operand | None, beta):
    t = src.tensor
    q = _array.HostBuffer((t.numel // codes_per_byte(bits),), _array.DL_INT8)
    params = _array.HostBuffer(params_shape(groups, symmetric), _FLOAT32)
    data, _keep = _contiguous(t)
    e_ptr, e_dtype = _error_buffer(err)
    sig.SWIZZLE_QUANTIZE(t.dtype, in_=data, q=q.data, params=params.data, err=e_ptr, err_dtype=e_dtype, beta=beta,
                         n=t.numel, groups=groups, pipe=pipeline, nodes=nodes, dpn=dpn, bits=bits,
                         symmetric=symmetric, threads=num_threads())
    return src.adapter.from_host(q, "int8"), src.adapter.from_host(params, "float32")


@registry.implements("quantized_reduction", "cpu")
def quantized_reduction(codes: Operand, params: Operand, in_groups, out_groups, bits, symmetric, devices,
                        half_accumulate, q_shape, err: Operand | None, beta):
    n = codes.tensor.numel * codes_per_byte(bits) // devices     # values per slab = output values
    q_ptr, _keep_q = _contiguous(codes.tensor)
    p_ptr, _keep_p = _contiguous(params.tensor)
    q = _array.HostBuffer(q_shape, _array.DL_INT8)
    out_params = _array.HostBuffer(params_shape(out_groups, symmetric), _FLOAT32)
    e_ptr, e_dtype = _error_buffer(err)
    sig.QUANTIZED_REDUCTION(q_in=q_ptr, params_in=p_ptr, q=q.data, params=out_params.data, err=e_ptr,
                            err_dtype=e_dtype, beta=beta, n=n, in_groups=in_groups, groups=out_groups,
                            devices=devices, bits=bits, symmetric=symmetric, half_accumulate=half_accumulate,
                            threads=num_threads())
    return codes.adapter.from_host(q, "int8"), codes.adapter.from_host(out_params, "float32")
