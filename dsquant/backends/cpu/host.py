"""The CPU backend: drives the OpenMP kernels of ``_cpu`` on host memory.

Registers its implementations with ``dsquant.core.registry`` for the device "cpu" (the CUDA
backend registers the same operations for "cuda"). Arguments arrive checked and resolved by
``dsquant.ops``; results are arrays of the caller's framework:

* ``fake_quantize(src, dst, groups, bits, symmetric, stochastic, seed, offset, block)``
* ``fake_quantize_inplace(op, groups, bits, symmetric, stochastic, seed, offset)``
* ``quantize(src, groups, bits, symmetric, q_shape, p_shape, block) -> (q, params)``
* ``quantize_given(src, params, groups, bits, symmetric, q_shape, block) -> q`` (the caller's params)
* ``dequantize(codes, params, groups, bits, symmetric, dtype, shape, dst, block) -> array``

`block` is None when the groups are contiguous runs in C order (DeepSpeed's layout, which the
kernels read), else the block of a strided grouping: the elements are then copied into group
order (``core.grouping.group_order``) for the kernels and the results copied back.
* ``dequantize_unsigned_half(codes, scale, minimum, num_group, group_size, bits) -> array``
* ``fp_ds_quantize`` / ``fp_ds_dequantize``: DeepSpeed's FP quantizer records (docs/deepspeed_fp.md)
"""
from __future__ import annotations

import ctypes
import math

import numpy as np

from ...core import dtypes, fp_ds, registry, threads
from ...core.formats import codes_per_byte, params_shape
from ...core.grouping import c_strides, code_block, group_order
from ...interop import _array
from ...interop.operand import Operand
from .. import codes as _packing
from . import _cpu, forksafe
from . import signatures as sig

_strided_copy = forksafe.guard(_cpu.strided_copy)   # safe to call in a forked child (forksafe.py)
_blocked_copy = forksafe.guard(_cpu.blocked_copy)   # the same through cache tiles, for transposes (regroup.hpp)

_FLOAT16, _FLOAT32 = dtypes.FLOAT16.code, dtypes.FLOAT32.code


_requested: tuple[bytes | None, int | None] = (None, None)    # (DSQUANT_NUM_THREADS as read, its value)


@registry.implements("num_threads", "cpu")
def num_threads() -> int:
    """CPU threads used by a call: DSQUANT_NUM_THREADS, else OpenMP's (OMP_NUM_THREADS)."""
    global _requested
    raw = _cpu.getenv(b"DSQUANT_NUM_THREADS")    # parsed again only when it changes (a per-call cost)
    if raw != _requested[0]:
        _requested = (raw, threads.requested())
    return _requested[1] or _cpu.max_threads()      # (OpenMP's is at least 1)


@registry.implements("openmp_threads", "cpu")
def openmp_threads() -> int:
    """OpenMP's default thread count (OMP_NUM_THREADS, else the cores)."""
    return _cpu.max_threads()


@registry.implements("cpu_isa", "cpu")
def cpu_isa() -> str:
    """The kernels in use: "avx512" (AVX-512 F/BW/VL/DQ), "avx2" (AVX2 + FMA + F16C) or "baseline"
    (DSQUANT_CPU_ISA=<tier> or DSQUANT_CPU_BASELINE=1 force one)."""
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
    # positional, in FAKE_QUANTIZE's field order (in_ out n groups bits symmetric stochastic seed offset threads)
    sig.FAKE_QUANTIZE.run(t.dtype, src_ptr, dst_ptr, t.numel, groups, bits, symmetric, stochastic, seed, offset,
                          num_threads())


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


# ------------------------------------------------------------------------------ strided groupings
def _regroup(src_ptr: int, src_strides, dst_ptr: int, dst_strides, shape, block, itemsize: int, to_groups: bool):
    """Copies an array of `shape` between its layout (`src_strides` or `dst_strides`, in elements)
    and group order (contiguous, core.grouping.group_order): into group order when `to_groups`,
    else back out of it."""
    strides = src_strides if to_groups else dst_strides
    view_shape, view_strides = group_order(shape, strides, block)
    dense = c_strides(view_shape)
    if to_groups:
        _blocked_copy(src_ptr, view_strides, dst_ptr, dense, view_shape, itemsize, num_threads())
    else:
        _blocked_copy(src_ptr, dense, dst_ptr, view_strides, view_shape, itemsize, num_threads())


def _host_array(ptr: int, count: int, dtype) -> np.ndarray:
    """A NumPy view of `count` elements of `dtype` at host address `ptr` (for codes moved one by one)."""
    dtype = np.dtype(dtype)
    return np.frombuffer((ctypes.c_char * (count * dtype.itemsize)).from_address(ptr), dtype)


def _fake_strided(t: _array.Tensor, dst: Operand | None, target: int, groups, bits, symmetric, stochastic,
                  seed, offset, block) -> None:
    scratch = _array.HostBuffer((t.numel * t.itemsize,), _array.DL_INT8)   # the elements in group order
    _regroup(t.data, t.strides, scratch.data, None, t.shape, block, t.itemsize, True)
    _run_fake(scratch.data, scratch.data, t, groups, bits, symmetric, stochastic, seed, offset)
    strides = dst.tensor.strides if dst is not None else c_strides(t.shape)
    _regroup(scratch.data, None, dst.tensor.data if dst is not None else target, strides, t.shape, block,
             t.itemsize, False)


@registry.implements("fake_quantize", "cpu")
def fake_quantize(src: Operand, dst: Operand | None, groups, bits, symmetric, stochastic, seed, offset, block=None):
    t = src.tensor
    if block is not None:
        buffer = None if dst is not None else _array.HostBuffer(t.shape, t.dtype, src.adapter.bfloat16_as_bits
                                                                 and t.dtype == dtypes.BFLOAT16.code)
        _fake_strided(t, dst, buffer.data if buffer is not None else 0, groups, bits, symmetric, stochastic,
                      seed, offset, block)
        return src.adapter.from_host(buffer, dtypes.NAMES[t.dtype]) if dst is None else dst.obj
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
def _output(shape, dl_dtype, dst: Operand | None):
    """(address to write an int8/float32 result to, the new buffer or None when writing straight into dst)."""
    if dst is not None and dst.tensor.is_c_contiguous:
        return dst.tensor.data, None
    buffer = _array.HostBuffer(shape, dl_dtype)
    return buffer.data, buffer


def _hand_over(buffer, dst: Operand | None, like: Operand, dtype_name: str):
    """An int8/float32 result: the new buffer in the caller's framework, or dst (written back if needed)."""
    if dst is None:
        return like.adapter.from_host(buffer, dtype_name)
    if buffer is not None:
        _scatter(buffer.data, dst.tensor)
    return dst.obj


@registry.implements("quantize", "cpu")
def quantize(src: Operand, groups, bits, symmetric, q_shape, p_shape=None, block=None,
             q_dst: Operand | None = None, p_dst: Operand | None = None):
    t = src.tensor
    q_ptr, q = _output(q_shape, _array.DL_INT8, q_dst)
    p_ptr, params = _output(p_shape or params_shape(groups, symmetric), _FLOAT32, p_dst)
    if t.numel or math.prod(p_shape or params_shape(groups, symmetric)):   # an empty grid has no params
        _codes(t, q_ptr, q_shape, bits, block, lambda data, codes: sig.INT_QUANTIZE(
            t.dtype, in_=data, q=codes, params=p_ptr, n=t.numel, groups=groups, bits=bits,
            symmetric=symmetric, threads=num_threads()))
    return _hand_over(q, q_dst, src, "int8"), _hand_over(params, p_dst, src, "float32")


@registry.implements("quantize_given", "cpu")
def quantize_given(src: Operand, params: Operand, groups, bits, symmetric, q_shape, block=None):
    """Codes of `src` with the caller's params (already in the grid's order, i.e. group order)."""
    t = src.tensor
    q = _array.HostBuffer(q_shape, _array.DL_INT8)
    p_ptr, _keep_p = _contiguous(params.tensor)
    if t.numel:
        _codes(t, q.data, q_shape, bits, block, lambda data, codes: sig.INT_QUANTIZE_GIVEN(
            t.dtype, in_=data, params=p_ptr, q=codes, n=t.numel, groups=groups, bits=bits, symmetric=symmetric,
            threads=num_threads()))
    return src.adapter.from_host(q, "int8")


def _codes(t: _array.Tensor, q: int, q_shape, bits, block, run) -> None:
    """Writes the codes of `t` into `q` (C order, `q_shape`) by `run(address of the elements,
    address of their codes)`, a kernel that takes the elements with the groups contiguous: `t`
    itself (block None), else `t` copied into group order and the codes copied back."""
    if block is None:
        data, _keep = _contiguous(t)
        run(data, q)
        return
    scratch = _array.HostBuffer((t.numel * t.itemsize,), _array.DL_INT8)   # the elements in group order
    _regroup(t.data, t.strides, scratch.data, None, t.shape, block, t.itemsize, True)
    per = codes_per_byte(bits)
    grouped = _array.HostBuffer((t.numel // per,), _array.DL_INT8)        # their codes, in group order
    run(scratch.data, grouped.data)
    byte_block = code_block(block, per)
    if byte_block is not None:                     # whole bytes belong to one group: move bytes
        _regroup(grouped.data, None, q, c_strides(q_shape), q_shape, byte_block, 1, False)
        return
    ones = _array.HostBuffer((t.numel,), _array.DL_INT8)                  # one code per byte, group order
    _packing.unpack(np, _host_array(grouped.data, t.numel // per, np.uint8), bits,
                  _host_array(ones.data, t.numel, np.int8))
    placed = _array.HostBuffer((t.numel,), _array.DL_INT8)                # one code per byte, x's order
    _regroup(ones.data, None, placed.data, c_strides(t.shape), t.shape, block, 1, False)
    _packing.pack(np, _host_array(placed.data, t.numel, np.int8), bits, _host_array(q, t.numel // per, np.uint8))


@registry.implements("dequantize", "cpu")
def dequantize(codes: Operand, params: Operand, groups, bits, symmetric, dtype, shape, dst: Operand | None,
               block=None):
    q_ptr, _keep_q = _contiguous(codes.tensor)
    p_ptr, _keep_p = _contiguous(params.tensor)
    numel = math.prod(shape)
    if block is not None and numel:
        q_ptr, _keep_q = _codes_to_groups(q_ptr, codes.tensor.shape, shape, bits, block)
    if block is None or not numel:
        target, buffer = _result(codes, shape, dtype, dst)
        _int_dequantize(q_ptr, p_ptr, target, numel, groups, bits, symmetric, dtype)
        return _deliver(buffer, dst, codes, dtype)
    itemsize = dtypes.FLOAT_DTYPES[dtype].itemsize
    grouped = _array.HostBuffer((numel * itemsize,), _array.DL_INT8)      # the values in group order
    _int_dequantize(q_ptr, p_ptr, grouped.data, numel, groups, bits, symmetric, dtype)
    if dst is not None:
        _regroup(grouped.data, None, dst.tensor.data, dst.tensor.strides, shape, block, itemsize, False)
        return dst.obj
    buffer = _array.HostBuffer(shape, dtype, dtype == dtypes.BFLOAT16.code and codes.adapter.bfloat16_as_bits)
    _regroup(grouped.data, None, buffer.data, c_strides(shape), shape, block, itemsize, False)
    return codes.adapter.from_host(buffer, dtypes.NAMES[dtype])


def _int_dequantize(q: int, params: int, out: int, numel: int, groups, bits, symmetric, dtype) -> None:
    sig.INT_DEQUANTIZE(dtype, q=q, params=params, out=out, n=numel, groups=groups, bits=bits,
                       symmetric=symmetric, threads=num_threads())


def _codes_to_groups(q_ptr: int, q_shape, shape, bits, block):
    """(address of the codes at C-contiguous `q_ptr` moved into group order, their buffer)."""
    per, numel = codes_per_byte(bits), math.prod(shape)
    grouped = _array.HostBuffer((numel // per,), _array.DL_INT8)
    byte_block = code_block(block, per)
    if byte_block is not None:
        _regroup(q_ptr, c_strides(q_shape), grouped.data, None, q_shape, byte_block, 1, True)
        return grouped.data, grouped
    ones = _array.HostBuffer((numel,), _array.DL_INT8)
    _packing.unpack(np, _host_array(q_ptr, numel // per, np.uint8), bits, _host_array(ones.data, numel, np.int8))
    placed = _array.HostBuffer((numel,), _array.DL_INT8)
    _regroup(ones.data, c_strides(shape), placed.data, None, shape, block, 1, True)
    _packing.pack(np, _host_array(placed.data, numel, np.int8), bits, _host_array(grouped.data, numel // per, np.uint8))
    return grouped.data, grouped


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


# ------------------------------------------------------------------------------ minifloat codes
_UINT8 = (1, 8)   # DLPack (kDLUInt, 8)


@registry.implements("fp_quantize", "cpu")
def fp_quantize(src: Operand, fmt, scaling, rounding, groups, code_shape, stochastic, saturate, seed, offset):
    """(codes, scales) where scales is float32 [groups] (absmax), uint8 [groups] (mx) or
    (uint8 [groups], float32 [1]) (nvfp4)."""
    t = src.tensor
    codes = _array.HostBuffer(code_shape, _UINT8)
    absmax = scaling == 0
    scales = _array.HostBuffer((groups,), _FLOAT32 if absmax else _UINT8)
    tensor_scale = _array.HostBuffer((1,), _FLOAT32) if scaling == 2 else None
    data, _keep = _contiguous(t)
    sig.FP_QUANTIZE(t.dtype, in_=data, codes=codes.data, scales=scales.data,
                    tensor_scale=tensor_scale.data if tensor_scale is not None else 0, out=0, n=t.numel,
                    groups=groups, fmt=fmt, scaling=scaling, rounding=rounding, stochastic=stochastic,
                    saturate=saturate, seed=seed, offset=offset, threads=num_threads())
    wrap = src.adapter.from_host
    out_scales = wrap(scales, "float32" if absmax else "uint8")
    if tensor_scale is not None:
        out_scales = (out_scales, wrap(tensor_scale, "float32"))
    return wrap(codes, "uint8"), out_scales


@registry.implements("fake_fp_quantize", "cpu")
def fake_fp_quantize(src: Operand, dst: Operand | None, fmt, scaling, rounding, groups, stochastic, saturate, seed,
                     offset):
    t = src.tensor
    target, buffer = _result(src, t.shape, t.dtype, dst)
    data, _keep = _contiguous(t)
    sig.FP_QUANTIZE(t.dtype, in_=data, codes=0, scales=0, tensor_scale=0, out=target, n=t.numel, groups=groups,
                    fmt=fmt, scaling=scaling, rounding=rounding, stochastic=stochastic, saturate=saturate,
                    seed=seed, offset=offset, threads=num_threads())
    return _deliver(buffer, dst, src, t.dtype)


@registry.implements("fp_dequantize", "cpu")
def fp_dequantize(codes: Operand, scales: Operand, tensor_scale: Operand | None, fmt, scaling, groups, numel, dtype,
                  shape, dst: Operand | None):
    q_ptr, _keep_q = _contiguous(codes.tensor)
    s_ptr, _keep_s = _contiguous(scales.tensor)
    t_ptr = tensor_scale.tensor.data if tensor_scale is not None else 0
    target, buffer = _result(codes, shape, dtype, dst)
    sig.FP_DEQUANTIZE(dtype, codes=q_ptr, scales=s_ptr, tensor_scale=t_ptr, out=target, n=numel, groups=groups,
                      fmt=fmt, scaling=scaling, threads=num_threads())
    return _deliver(buffer, dst, codes, dtype)


# ------------------------------------------------------------------------------ DeepSpeed FP records
_DL_UINT8 = (1, 8)   # DLPack kDLUInt, 8 bits: records, codes and scale bytes are uint8 (DeepSpeed's dtype)


def _host_rows(rows: Operand | None, source_rows: int):
    """(address of the row indexes as int64, the array that must stay alive), checked in bounds."""
    if rows is None:
        return 0, None
    import numpy as np

    from ...core.fp_ds import check_rows
    t = rows.tensor
    data, keep = _contiguous(t)
    ctype = np.int32 if t.itemsize == 4 else np.int64
    values = np.frombuffer((ctypes.c_char * (t.numel * t.itemsize)).from_address(data), dtype=ctype)
    wide = np.array(values, dtype=np.int64)     # a copy: the caller's indexes are checked as used
    del keep
    check_rows(wide, source_rows)
    return wide.ctypes.data, wide


@registry.implements("fp_ds_quantize", "cpu")
def fp_ds_quantize(src: Operand, dst: Operand | None, space, group_size, bits, mantissa, stochastic, seed, offset,
                   codes_shape=None):
    """Records [G, R] into dst (or a new uint8 array); with codes_shape, the split layout: (codes of
    that shape, scale bytes [G, 4])."""
    t = src.tensor
    groups = t.numel // group_size
    cb = fp_ds.code_bytes(group_size, bits)
    data, _keep = _contiguous(t)
    if codes_shape is None:
        records = None if dst is not None else _array.HostBuffer((groups, cb + 4), _DL_UINT8)
        base = dst.tensor.data if dst is not None else records.data
        codes_ptr, scales_ptr, code_stride, scale_stride = base, base + cb, cb + 4, cb + 4
    else:
        codes = _array.HostBuffer(codes_shape, _DL_UINT8)
        scales = _array.HostBuffer((groups, 4), _DL_UINT8)
        codes_ptr, scales_ptr, code_stride, scale_stride = codes.data, scales.data, cb, 4
    sig.FP_DS_QUANTIZE(t.dtype, in_=data, codes=codes_ptr, scales=scales_ptr, n=t.numel, group_size=group_size,
                       code_stride=code_stride, scale_stride=scale_stride, bits=bits, mantissa=mantissa,
                       space=space, stochastic=stochastic, seed=seed, offset=offset, threads=num_threads())
    if codes_shape is not None:
        return src.adapter.from_host(codes, "uint8"), src.adapter.from_host(scales, "uint8")
    return dst.obj if dst is not None else src.adapter.from_host(records, "uint8")


@registry.implements("fp_ds_dequantize", "cpu")
def fp_ds_dequantize(codes: Operand, scales: Operand | None, space, group_size, bits, mantissa, dtype, shape,
                     dst: Operand | None, rows: Operand | None = None, row_elems=0, source_rows=0):
    """Values of records (scales None) or of split codes and scales, optionally of selected rows."""
    cb = fp_ds.code_bytes(group_size, bits)
    c_ptr, _keep_c = _contiguous(codes.tensor)
    if scales is None:
        s_ptr, code_stride, scale_stride = c_ptr + cb, cb + 4, cb + 4
        _keep_s = None
    else:
        s_ptr, _keep_s = _contiguous(scales.tensor)
        code_stride, scale_stride = cb, 4
    r_ptr, _keep_r = _host_rows(rows, source_rows)
    target, buffer = _result(codes, shape, dtype, dst)
    sig.FP_DS_DEQUANTIZE(dtype, codes=c_ptr, scales=s_ptr, out=target, rows=r_ptr, n=math.prod(shape),
                         group_size=group_size, code_stride=code_stride, scale_stride=scale_stride,
                         row_elems=row_elems, bits=bits, mantissa=mantissa, space=space, threads=num_threads())
    return _deliver(buffer, dst, codes, dtype)


class _Float32Alias:
    """float32 elements at `address` with byte strides, through the array interface, keeping the
    operand (its owning DLPack view) alive."""
    __slots__ = ("base", "__array_interface__")

    def __init__(self, op: Operand, address: int, shape, strides):
        self.base = op
        self.__array_interface__ = {"version": 3, "typestr": "<f4", "shape": tuple(shape),
                                    "strides": tuple(strides), "data": (address, op.immutable)}


@registry.implements("fp_ds_scales_view", "cpu")
def fp_ds_scales_view(op: Operand, offset: int, groups: int, row_stride: int):
    """A NumPy float32 [groups, 1] array aliasing the scales at op's bytes offset + g·row_stride."""
    import numpy as np
    return np.asarray(_Float32Alias(op, op.tensor.data + offset, (groups, 1), (row_stride, 4)))
