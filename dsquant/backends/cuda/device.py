"""The CUDA backend: the kernels of ``cuda/*.cu`` (compiled by ``_kernels``, planned by
``_launch``) loaded as CuPy RawModules and launched on the caller framework's current stream, on
the device that holds the input. Same interface as ``_host``.

Imported on the first GPU array only: importing it imports CuPy.
"""
from __future__ import annotations

import contextlib
import sys
import threading

try:
    import cupy
except ImportError as exc:   # the message is the whole fix
    raise ImportError("dsquant needs CuPy for arrays on CUDA GPUs: pip install dsquant[cuda13] "
                      "(CUDA 13 driver) or pip install dsquant[cuda12] (CUDA 12 driver)") from exc

import numpy as np

from . import _array, _interop, _kernels, _launch, _ops
from ._interop import Operand

_FLOAT16, _BF16 = 0, 1     # dsquant dtype codes
# The CuPy dtype of a result, by dsquant dtype (CuPy has no bfloat16: its bits live in uint16).
_CUPY_DTYPES = (np.float16, np.uint16, np.float32, np.float64)
# Unsigned integers of each itemsize: copies through these move bits, never values.
_BITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def device_count() -> int:
    try:
        return cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError:
        return 0


# ------------------------------------------------------------------------------ streams
def _torch_stream(device_id: int) -> int:
    return sys.modules["torch"].cuda.current_stream(device_id).cuda_stream


def _cupy_stream(device_id: int) -> int:
    with cupy.cuda.Device(device_id):
        return cupy.cuda.get_current_stream().ptr


# The stream a framework's caller expects work on: torch's own current stream for torch tensors,
# CuPy's current stream for everything else (CuPy, JAX, other DLPack producers).
_CURRENT_STREAM = {_interop.TORCH: _torch_stream}


def current_stream(framework: str, device_id: int) -> int:
    """The caller's current stream on `device_id` (a cudaStream_t; 0 is the legacy default)."""
    return _CURRENT_STREAM.get(framework, _cupy_stream)(device_id)


def _dlpack_stream(ptr: int) -> int:
    # DLPack forbids 0; 1 names the legacy default stream, 2 the per-thread one (CuPy's ptr for it)
    return ptr or 1


def _stream(framework: str, device_id: int):
    ptr = current_stream(framework, device_id)
    return cupy.cuda.ExternalStream(ptr, device_id) if ptr else cupy.cuda.Stream.null


def intake(x, name: str) -> Operand:
    """Consume a GPU array through DLPack, passing the stream the kernels will run on, so the
    producer orders its pending work on `x` before them."""
    _, device_id = x.__dlpack_device__()
    ptr = current_stream(_interop.framework_of(x), int(device_id))
    op = _interop.intake(x, name, stream=_dlpack_stream(ptr))
    if op.tensor.data % op.tensor.itemsize:
        raise BufferError(f"{name}: its data address {op.tensor.data:#x} is not a multiple of the "
                          f"element size {op.tensor.itemsize}; pass an aligned array")
    return op


# ------------------------------------------------------------------------------ kernels per device
class _Device:
    """The kernels of one GPU: compiled for its architecture on first use, loaded as RawModules."""

    def __init__(self, device_id: int):
        self.id = device_id
        capability = int(cupy.cuda.Device(device_id).compute_capability)
        self.target = _kernels.target_for(capability)
        self._modules: dict[str, tuple[object, dict[str, str]]] = {}
        self._functions: dict[str, object] = {}

    def function(self, name: str):
        fn = self._functions.get(name)
        if fn is None:
            module = _kernels.module_of(name)
            if module not in self._modules:
                compiled = _kernels.compile_module(module, self.target)
                self._modules[module] = (cupy.RawModule(path=str(compiled.path)), compiled.lowered)
            raw, lowered = self._modules[module]
            fn = self._functions[name] = raw.get_function(lowered[name])
        return fn


_devices: dict[int, _Device] = {}
_lock = threading.Lock()


def _device(device_id: int) -> _Device:
    with _lock:
        if device_id not in _devices:
            _devices[device_id] = _Device(device_id)
        return _devices[device_id]


@contextlib.contextmanager
def _launching(op: Operand):
    """On `op`'s device, inside the caller's current stream: yields (that device's kernels, the
    stream). Allocations and copies made inside are ordered with the kernels launched there."""
    device_id = op.tensor.device_id
    with cupy.cuda.Device(device_id):
        stream = _stream(op.framework, device_id)
        with stream:
            yield _device(device_id), stream


def _run(plan, device: _Device, stream) -> None:
    with _lock:   # compilation and module loading happen once, under the lock
        functions = [device.function(launch.kernel) for launch in plan]
    for fn, launch in zip(functions, plan):
        fn((launch.grid,), (launch.block,), launch.args, stream=stream)


def _fake(t: _array.Tensor, src: int, dst: int, groups, bits, symmetric, stochastic, seed, offset,
          device: _Device, stream) -> None:
    nbytes = _launch.keys_nbytes(t.dtype, t.numel, groups)
    keys = cupy.empty(nbytes, dtype=np.uint8) if nbytes else None   # O(groups) statistics scratch
    plan = _launch.fake_quantize(t.dtype, src, dst, t.numel, groups, bits, symmetric, stochastic, seed,
                                 offset, keys.data.ptr if keys is not None else 0)
    _run(plan, device, stream)


# ------------------------------------------------------------------------------ arrays
def _view(t: _array.Tensor) -> cupy.ndarray:
    """A CuPy view (bits as unsigned integers) of a consumed tensor's memory, strides and all."""
    low = sum((n - 1) * s for n, s in zip(t.shape, t.strides) if s < 0 and n > 0)
    high = sum((n - 1) * s for n, s in zip(t.shape, t.strides) if s > 0 and n > 0)
    size = t.itemsize
    memory = cupy.cuda.UnownedMemory(t.data + low * size, (high - low + 1) * size, t, t.device_id)
    return cupy.ndarray(t.shape, _BITS[size], cupy.cuda.MemoryPointer(memory, -low * size),
                        strides=tuple(s * size for s in t.strides))


def _bits(a: cupy.ndarray) -> cupy.ndarray:
    return a.view(_BITS[a.itemsize])


def _as_torch(result, dtype: int):
    producer = _array.Relabeled(result, dtype) if dtype == _BF16 else result
    return sys.modules["torch"].from_dlpack(producer)


def _as_jax(result, dtype: int):
    import jax.dlpack   # imported already by whoever made the input
    producer = _array.Relabeled(result, dtype) if dtype == _BF16 else result
    return jax.dlpack.from_dlpack(producer)


# Results in the caller's framework; CuPy and other producers get the CuPy array itself.
_WRAP = {_interop.TORCH: _as_torch, _interop.JAX: _as_jax}


def _wrap(result: cupy.ndarray, framework: str, dtype: int | None = None):
    """`result` in `framework`; `dtype` is the dsquant dtype code of a float result (bfloat16 is
    relabelled), None for codes and params."""
    wrap = _WRAP.get(framework)
    return result if wrap is None else wrap(result, dtype)


# ------------------------------------------------------------------------------ operations
def fake_quantize(src: Operand, dst: Operand | None, groups, bits, symmetric, stochastic, seed, offset):
    t = src.tensor
    with _launching(src) as (device, stream):   # allocations and copies are ordered with the kernels
        direct = dst is not None and dst.tensor.is_c_contiguous
        result = None if direct else cupy.empty(t.shape, _CUPY_DTYPES[t.dtype])
        target = _view(dst.tensor) if direct else _bits(result)
        source = t.data
        if not t.is_c_contiguous and t.numel:
            target[...] = _view(t)            # the one contiguous copy, made in the result itself
            source = target.data.ptr
        _fake(t, source, target.data.ptr, groups, bits, symmetric, stochastic, seed, offset, device, stream)
        if dst is None:
            return _wrap(result, src.framework, t.dtype)
        if not direct and t.numel:
            _view(dst.tensor)[...] = target   # write back into a non-contiguous `out`
        return dst.obj


def fake_quantize_inplace(op: Operand, groups, bits, symmetric, stochastic, seed, offset) -> None:
    t = op.tensor
    with _launching(op) as (device, stream):
        if t.is_c_contiguous or not t.numel:
            _fake(t, t.data, t.data, groups, bits, symmetric, stochastic, seed, offset, device, stream)
            return
        view = _view(t)
        scratch = cupy.ascontiguousarray(view)
        _fake(t, scratch.data.ptr, scratch.data.ptr, groups, bits, symmetric, stochastic, seed, offset,
              device, stream)
        view[...] = scratch


# ------------------------------------------------------------------------------ integer codes
def _contiguous(t: _array.Tensor):
    """(address of t's elements in C order, the copy that must stay alive or None). Call inside
    the launch stream's context, so the copy is ordered before the kernels."""
    if t.is_c_contiguous or not t.numel:
        return t.data, None
    copy = cupy.ascontiguousarray(_view(t))
    return copy.data.ptr, copy


def quantize(src: Operand, groups, bits, symmetric, q_shape):
    t = src.tensor
    with _launching(src) as (device, stream):
        q = cupy.empty(q_shape, np.int8)
        params = cupy.empty((groups, 1 if symmetric else 2), np.float32)
        data, _keep = _contiguous(t)
        nbytes = _launch.int_keys_nbytes(t.dtype, t.numel, groups, bits)
        keys = cupy.empty(nbytes, np.uint8) if nbytes else None   # O(groups) statistics scratch
        _run(_launch.quantize(t.dtype, data, q.data.ptr, params.data.ptr, t.numel, groups, bits, symmetric,
                              keys.data.ptr if keys is not None else 0), device, stream)
        return _wrap(q, src.framework), _wrap(params, src.framework)


def dequantize(codes: Operand, params: Operand, groups, bits, symmetric, dtype, shape, dst: Operand | None):
    t = codes.tensor
    with _launching(codes) as (device, stream):
        q_ptr, _keep_q = _contiguous(t)
        p_ptr, _keep_p = _contiguous(params.tensor)
        direct = dst is not None and dst.tensor.is_c_contiguous
        result = None if direct else cupy.empty(shape, _CUPY_DTYPES[dtype])
        target = _view(dst.tensor) if direct else _bits(result)
        numel = t.numel * _ops.codes_per_byte(bits)
        _run(_launch.dequantize(dtype, q_ptr, p_ptr, target.data.ptr, numel, groups, bits, symmetric),
             device, stream)
        if dst is None:
            return _wrap(result, codes.framework, dtype)
        if not direct and numel:
            _view(dst.tensor)[...] = target   # write back into a non-contiguous `out`
        return dst.obj


def dequantize_unsigned_half(codes: Operand, scale: Operand, minimum: Operand, num_group, group_size, bits):
    t = codes.tensor
    with _launching(codes) as (device, stream):
        q_ptr, _keep_q = _contiguous(t)
        s_ptr, _keep_s = _contiguous(scale.tensor)
        m_ptr, _keep_m = _contiguous(minimum.tensor)
        out = cupy.empty((num_group, group_size), np.float16)
        _run(_launch.dequantize_unsigned_half(q_ptr, s_ptr, m_ptr, out.data.ptr, num_group, group_size, bits),
             device, stream)
        return _wrap(out, codes.framework, _FLOAT16)


# ------------------------------------------------------------------------------ ZeRO++ ops
def _error(err: Operand | None):
    """(address, dsquant dtype code or None) of a LoCo error buffer (checked C-contiguous by _zeropp)."""
    return (err.tensor.data, err.tensor.dtype) if err is not None else (0, None)


def swizzle_quantize(src: Operand, groups, bits, symmetric, pipeline, nodes, dpn, err: Operand | None, beta):
    t = src.tensor
    with _launching(src) as (device, stream):
        data, _keep = _contiguous(src.tensor)
        q = cupy.empty((t.numel // _ops.codes_per_byte(bits),), np.int8)
        params = cupy.empty((groups, 1 if symmetric else 2), np.float32)
        e_ptr, e_dtype = _error(err)
        _run(_launch.swizzle_quantize(t.dtype, data, q.data.ptr, params.data.ptr, t.numel, groups, bits,
                                      symmetric, pipeline, nodes, dpn, e_ptr, e_dtype, beta), device, stream)
        return _wrap(q, src.framework), _wrap(params, src.framework)


def quantized_reduction(codes: Operand, params: Operand, in_groups, out_groups, bits, symmetric, devices,
                        half_accumulate, q_shape, err: Operand | None, beta):
    t = codes.tensor
    per = _ops.codes_per_byte(bits)
    n = t.numel * per // devices                     # values per slab = output values
    with _launching(codes) as (device, stream):
        q_ptr, _keep_q = _contiguous(codes.tensor)
        p_ptr, _keep_p = _contiguous(params.tensor)
        q = cupy.empty(q_shape, np.int8)
        out_params = cupy.empty((out_groups, 1 if symmetric else 2), np.float32)
        e_ptr, e_dtype = _error(err)
        _run(_launch.quantized_reduction(q_ptr, p_ptr, q.data.ptr, out_params.data.ptr, n, in_groups, out_groups,
                                         devices, bits, symmetric, half_accumulate, e_ptr, e_dtype, beta),
             device, stream)
        return _wrap(q, codes.framework), _wrap(out_params, codes.framework)
