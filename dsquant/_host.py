"""The CPU backend: drives the OpenMP kernels of ``_cpu`` on host memory."""
from __future__ import annotations

from . import _array, _cpu, _interop
from ._interop import Operand
from ._ops import num_threads


def _run_fake(src_ptr, dst_ptr, t: _array.Tensor, groups, bits, symmetric, stochastic, seed, offset):
    _cpu.fake_quantize(src_ptr, dst_ptr, t.dtype, t.numel, groups, bits, symmetric, stochastic,
                       seed, offset, num_threads())


def _gather(t: _array.Tensor, dst_ptr: int) -> None:
    _cpu.strided_copy(t.data, t.strides, dst_ptr, _array.contiguous_strides(t.shape), t.shape,
                      t.itemsize, num_threads())


def _scatter(src_ptr: int, t: _array.Tensor) -> None:
    _cpu.strided_copy(src_ptr, _array.contiguous_strides(t.shape), t.data, t.strides, t.shape,
                      t.itemsize, num_threads())


def fake_quantize(src: Operand, dst: Operand | None, groups, bits, symmetric, stochastic, seed, offset):
    t = src.tensor
    if dst is not None and dst.tensor.is_c_contiguous:
        target, buffer = dst.tensor.data, None
    else:
        uint_view = dst is None and _interop.numpy_needs_uint_view(src.framework, t.dtype)
        buffer = _array.HostBuffer(t.shape, t.dtype, uint_view)
        target = buffer.data
    if t.is_c_contiguous:
        _run_fake(t.data, target, t, groups, bits, symmetric, stochastic, seed, offset)
    else:
        _gather(t, target)           # the one contiguous copy, made in the result itself
        _run_fake(target, target, t, groups, bits, symmetric, stochastic, seed, offset)
    if dst is None:
        return _interop.wrap_host(buffer, src.framework, t.dtype_name)
    if buffer is not None:
        _scatter(target, dst.tensor)
    return dst.obj


def fake_quantize_inplace(op: Operand, groups, bits, symmetric, stochastic, seed, offset) -> None:
    t = op.tensor
    if t.is_c_contiguous:
        _run_fake(t.data, t.data, t, groups, bits, symmetric, stochastic, seed, offset)
        return
    scratch = _array.HostBuffer(t.shape, t.dtype)
    _gather(t, scratch.data)
    _run_fake(scratch.data, scratch.data, t, groups, bits, symmetric, stochastic, seed, offset)
    _scatter(scratch.data, t)
