"""The CUDA backend: the kernels of ``cuda/*.cu`` (compiled by ``kernels``, planned by
``launch``) loaded as CuPy RawModules and launched on the caller framework's current stream, on
the device that holds the input. Registers the same operations for "cuda" as the CPU backend
does for "cpu".

Imported on the first GPU array only: importing it imports CuPy.
"""
from __future__ import annotations

import atexit
import collections
import contextlib
import threading

from ...core import missing

try:
    import cupy
except ImportError as exc:   # the message is the whole fix
    raise missing.MissingDependency(f"dsquant needs CuPy for arrays on CUDA GPUs: {missing.CUDA}") from exc

import numpy as np

from ...core import dtypes, registry
from ...core.formats import codes_per_byte, params_shape
from ...core.grouping import c_strides, code_block, group_order
from ...interop import _array
from ...interop.operand import Operand
from .. import codes as _codes
from . import kernels as _kernels
from . import launch as _launch

_FLOAT16 = dtypes.FLOAT16.code
# The CuPy dtype of a result, by dsquant dtype (CuPy has no bfloat16: its bits live in uint16).
_CUPY_DTYPES = tuple(d.storage if d is dtypes.BFLOAT16 else d.name for d in dtypes.FLOAT_DTYPES)
# Unsigned integers of each itemsize: copies through these move bits, never values.
_BITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def device_count() -> int:
    try:
        return cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError:
        return 0


# ------------------------------------------------------------------------------ streams
class _ForeignStream:
    """A cudaStream_t owned by another framework, in the CUDA stream protocol (what CuPy 14's
    ``Stream.from_external`` takes)."""
    __slots__ = ("ptr",)

    def __init__(self, ptr: int):
        self.ptr = ptr

    def __cuda_stream__(self):
        return (0, self.ptr)


def external_stream(ptr: int, device_id: int):
    """A CuPy stream object for another framework's stream `ptr` on `device_id` (0: the legacy
    default stream). CuPy 14 deprecates ``ExternalStream`` (a DeprecationWarning, an error under
    warnings-as-errors) for ``Stream.from_external``; CuPy 13 has only the former."""
    if not ptr:
        return cupy.cuda.Stream.null
    if not hasattr(cupy.cuda.Stream, "from_external"):
        return cupy.cuda.ExternalStream(ptr, device_id)
    with cupy.cuda.Device(device_id):   # from_external takes the current device as the stream's
        return cupy.cuda.Stream.from_external(_ForeignStream(ptr))


def _cupy_stream(device_id: int):
    with cupy.cuda.Device(device_id):
        return cupy.cuda.get_current_stream()


def stream_of(adapter, device_id: int, obj=None):
    """The caller's current stream on `device_id` as a CuPy stream object: the framework's own
    (torch's current stream, JAX's stream for consumers) where its adapter names one, CuPy's
    current stream otherwise."""
    ptr = adapter.cuda_stream(obj, device_id)
    return _cupy_stream(device_id) if ptr is None else external_stream(ptr, device_id)


def current_stream(adapter, device_id: int, obj=None) -> int:
    """The caller's current stream on `device_id` as a cudaStream_t (0 is the legacy default)."""
    ptr = adapter.cuda_stream(obj, device_id)
    return _cupy_stream(device_id).ptr if ptr is None else ptr


def _dlpack_stream(ptr: int) -> int:
    # DLPack forbids 0; 1 names the legacy default stream, 2 the per-thread one (CuPy's ptr for it)
    return ptr or 1


@registry.implements("consumer_stream", "cuda")
def consumer_stream(adapter, obj, device_id: int) -> int:
    """The ``stream=`` to pass to a GPU array's ``__dlpack__``: the stream the kernels will run on,
    so the producer orders its pending work on the array before them."""
    return _dlpack_stream(current_stream(adapter, device_id, obj))


# ------------------------------------------------------------------------------ kernels per device
class _Device:
    """The kernels of one GPU: compiled for its architecture on first use, loaded as RawModules."""

    def __init__(self, device_id: int):
        self.id = device_id
        self.capability = int(cupy.cuda.Device(device_id).compute_capability)
        self.driver = cupy.cuda.runtime.driverGetVersion()
        self.target = _kernels.target_for(self.capability, self.driver)
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
            try:
                fn = self._functions[name] = raw.get_function(lowered[name])   # loads the module
            except Exception as exc:   # CUDADriverError; only PTX gets the explanation
                if self.target.startswith("sm_"):
                    raise
                raise RuntimeError(_kernels.ptx_unloadable(self.capability, self.driver,
                                                           f"{module}: {type(exc).__name__}: {exc}")) from exc
        return fn


_devices: dict[int, _Device] = {}
_lock = threading.Lock()


def device_kernels(device_id: int) -> _Device:
    with _lock:
        if device_id not in _devices:
            _devices[device_id] = _Device(device_id)
        return _devices[device_id]


# ------------------------------------------------------------------------------ inputs held for their kernels
# (event recorded after a call's kernels, the operands of that call), oldest first: the operands of
# frameworks whose adapter asks for it (JAX) stay referenced until their kernels are done, so that
# their memory is not freed and reused while a kernel still reads it.
_held: collections.deque = collections.deque()
_held_lock = threading.Lock()


def _hold(stream, operands) -> None:
    with _held_lock:
        _held.append((stream.record(), operands))


def _release_done() -> None:
    """Drops the operands whose kernels are done (checked on every GPU call)."""
    with _held_lock:
        while _held and _held[0][0].done:
            _held.popleft()


@atexit.register
def _release_all() -> None:
    # before the frameworks shut down (registered after their imports, so called before theirs)
    with _held_lock:
        while _held:
            event, _ = _held.popleft()
            event.synchronize()


@contextlib.contextmanager
def _launching(op: Operand, *others: Operand | None):
    """On `op`'s device, inside the caller's current stream: yields (that device's kernels, the
    stream). Allocations and copies made inside are ordered with the kernels launched there.
    `op` and the call's other array arguments are held until those kernels are done where the
    framework needs it."""
    _release_done()
    device_id = op.tensor.device_id
    with cupy.cuda.Device(device_id):
        stream = stream_of(op.adapter, device_id, op.obj)
        with stream:
            try:
                yield device_kernels(device_id), stream
            finally:
                if op.adapter.hold_until_done:
                    _hold(stream, (op, *others))


def run(plan, device: _Device, stream) -> None:
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
    run(plan, device, stream)


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


def _grouped(a: cupy.ndarray, block) -> cupy.ndarray:
    """A view of `a` whose C order visits its elements group by group (core.grouping.group_order):
    ``cupy.ascontiguousarray`` of it copies `a` into group order, assigning to it copies back."""
    shape, strides = group_order(a.shape, tuple(s // a.itemsize for s in a.strides), block)
    return cupy.ndarray(shape, a.dtype, a.data, strides=tuple(s * a.itemsize for s in strides))


def _codes_in_group_order(q: cupy.ndarray, shape, bits, block) -> cupy.ndarray:
    """Packed codes `q` (C-contiguous, values of `shape`) moved into group order: bytes when whole
    bytes belong to one group, else code by code."""
    per = codes_per_byte(bits)
    byte_block = code_block(block, per)
    if byte_block is not None:
        return cupy.ascontiguousarray(_grouped(q, byte_block)).reshape(-1)
    numel = q.size * per
    ones = cupy.empty(shape, np.int8)
    _codes.unpack(cupy, q.reshape(-1), bits, ones.reshape(-1))
    placed = cupy.ascontiguousarray(_grouped(ones, block)).reshape(-1)
    grouped = cupy.empty(numel // per, np.uint8)
    _codes.pack(cupy, placed, bits, grouped)
    return grouped


def _codes_from_group_order(grouped: cupy.ndarray, q: cupy.ndarray, shape, bits, block) -> None:
    """The inverse of :func:`_codes_in_group_order`: writes the group-order codes `grouped` into `q`."""
    per = codes_per_byte(bits)
    byte_block = code_block(block, per)
    if byte_block is not None:
        _grouped(q, byte_block)[...] = grouped.reshape(group_order(q.shape, c_strides(q.shape), byte_block)[0])
        return
    ones = cupy.empty(grouped.size * per, np.int8)
    _codes.unpack(cupy, grouped, bits, ones)
    placed = cupy.empty(shape, np.int8)
    _grouped(placed, block)[...] = ones.reshape(group_order(shape, c_strides(shape), block)[0])
    _codes.pack(cupy, placed.reshape(-1), bits, q.reshape(-1))


def _wrap(result: cupy.ndarray, like: Operand, dtype: int | None = None):
    """`result` in `like`'s framework; `dtype` is the dsquant dtype code of a float result
    (bfloat16 bits are relabelled for frameworks that have the type), None for codes and params."""
    relabel = _array.Relabeled(result, dtype) if dtype == dtypes.BFLOAT16.code else None
    return like.adapter.from_device(result, relabel)


# ------------------------------------------------------------------------------ operations
@registry.implements("fake_quantize", "cuda")
def fake_quantize(src: Operand, dst: Operand | None, groups, bits, symmetric, stochastic, seed, offset, block=None):
    t = src.tensor
    if block is not None and t.numel:
        with _launching(src, dst) as (device, stream):
            scratch = cupy.ascontiguousarray(_grouped(_view(t), block))      # the elements in group order
            _fake(t, scratch.data.ptr, scratch.data.ptr, groups, bits, symmetric, stochastic, seed, offset,
                  device, stream)
            result = cupy.empty(t.shape, _CUPY_DTYPES[t.dtype]) if dst is None else None
            target = _bits(result) if result is not None else _view(dst.tensor)
            _grouped(target, block)[...] = scratch
            return _wrap(result, src, t.dtype) if result is not None else dst.obj
    with _launching(src, dst) as (device, stream):   # allocations and copies are ordered with the kernels
        direct = dst is not None and dst.tensor.is_c_contiguous
        result = None if direct else cupy.empty(t.shape, _CUPY_DTYPES[t.dtype])
        target = _view(dst.tensor) if direct else _bits(result)
        source = t.data
        if not t.is_c_contiguous and t.numel:
            target[...] = _view(t)            # the one contiguous copy, made in the result itself
            source = target.data.ptr
        _fake(t, source, target.data.ptr, groups, bits, symmetric, stochastic, seed, offset, device, stream)
        if dst is None:
            return _wrap(result, src, t.dtype)
        if not direct and t.numel:
            _view(dst.tensor)[...] = target   # write back into a non-contiguous `out`
        return dst.obj


@registry.implements("fake_quantize_inplace", "cuda")
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


@registry.implements("quantize", "cuda")
def quantize(src: Operand, groups, bits, symmetric, q_shape, p_shape=None, block=None):
    t = src.tensor
    with _launching(src) as (device, stream):
        q = cupy.empty(q_shape, np.int8)
        params = cupy.empty(p_shape or params_shape(groups, symmetric), np.float32)
        if not t.numel and not params.size:      # an empty grid (an axis of length 0): nothing to write
            return _wrap(q, src), _wrap(params, src)
        strided = block is not None and t.numel
        if strided:
            scratch = cupy.ascontiguousarray(_grouped(_view(t), block))   # the elements in group order
            data, codes = scratch.data.ptr, cupy.empty(q.size, np.int8)   # their codes, in group order
        else:
            (data, _keep), codes = _contiguous(t), q
        nbytes = _launch.int_keys_nbytes(t.dtype, t.numel, groups, bits)
        keys = cupy.empty(nbytes, np.uint8) if nbytes else None   # O(groups) statistics scratch
        run(_launch.quantize(t.dtype, data, codes.data.ptr, params.data.ptr, t.numel, groups, bits, symmetric,
                              keys.data.ptr if keys is not None else 0), device, stream)
        if strided:
            _codes_from_group_order(codes, q, t.shape, bits, block)
        return _wrap(q, src), _wrap(params, src)


@registry.implements("quantize_given", "cuda")
def quantize_given(src: Operand, params: Operand, groups, bits, symmetric, q_shape, block=None):
    """Codes of `src` with the caller's params (already in the grid's order, i.e. group order)."""
    t = src.tensor
    with _launching(src, params) as (device, stream):
        q = cupy.empty(q_shape, np.int8)
        if not t.numel:
            return _wrap(q, src)
        p_ptr, _keep_p = _contiguous(params.tensor)
        strided = block is not None
        if strided:
            scratch = cupy.ascontiguousarray(_grouped(_view(t), block))   # the elements in group order
            data, codes = scratch.data.ptr, cupy.empty(q.size, np.int8)   # their codes, in group order
        else:
            (data, _keep), codes = _contiguous(t), q
        run(_launch.quantize_given(t.dtype, data, p_ptr, codes.data.ptr, t.numel, groups, bits, symmetric),
            device, stream)
        if strided:
            _codes_from_group_order(codes, q, t.shape, bits, block)
        return _wrap(q, src)


@registry.implements("dequantize", "cuda")
def dequantize(codes: Operand, params: Operand, groups, bits, symmetric, dtype, shape, dst: Operand | None,
               block=None):
    t = codes.tensor
    numel = t.numel * codes_per_byte(bits)
    with _launching(codes, params, dst) as (device, stream):
        q_ptr, _keep_q = _contiguous(t)
        p_ptr, _keep_p = _contiguous(params.tensor)
        if block is not None and numel:
            q = _view(t) if _keep_q is None else _keep_q
            grouped_q = _codes_in_group_order(q.reshape(t.shape), shape, bits, block)
            values = cupy.empty(numel, _CUPY_DTYPES[dtype])                  # in group order
            run(_launch.dequantize(dtype, grouped_q.data.ptr, p_ptr, values.data.ptr, numel, groups, bits,
                                   symmetric), device, stream)
            result = cupy.empty(shape, _CUPY_DTYPES[dtype]) if dst is None else None
            target = _bits(result) if result is not None else _view(dst.tensor)
            _grouped(target, block)[...] = _bits(values).reshape(group_order(shape, c_strides(shape), block)[0])
            return _wrap(result, codes, dtype) if result is not None else dst.obj
        direct = dst is not None and dst.tensor.is_c_contiguous
        result = None if direct else cupy.empty(shape, _CUPY_DTYPES[dtype])
        target = _view(dst.tensor) if direct else _bits(result)
        run(_launch.dequantize(dtype, q_ptr, p_ptr, target.data.ptr, numel, groups, bits, symmetric),
             device, stream)
        if dst is None:
            return _wrap(result, codes, dtype)
        if not direct and numel:
            _view(dst.tensor)[...] = target   # write back into a non-contiguous `out`
        return dst.obj


@registry.implements("dequantize_unsigned_half", "cuda")
def dequantize_unsigned_half(codes: Operand, scale: Operand, minimum: Operand, num_group, group_size, bits):
    t = codes.tensor
    with _launching(codes, scale, minimum) as (device, stream):
        q_ptr, _keep_q = _contiguous(t)
        s_ptr, _keep_s = _contiguous(scale.tensor)
        m_ptr, _keep_m = _contiguous(minimum.tensor)
        out = cupy.empty((num_group, group_size), np.float16)
        run(_launch.dequantize_unsigned_half(q_ptr, s_ptr, m_ptr, out.data.ptr, num_group, group_size, bits),
             device, stream)
        return _wrap(out, codes, _FLOAT16)


# ------------------------------------------------------------------------------ ZeRO++ ops
def _error(err: Operand | None):
    """(address, dsquant dtype code or None) of a LoCo error buffer (checked C-contiguous by _zeropp)."""
    return (err.tensor.data, err.tensor.dtype) if err is not None else (0, None)


@registry.implements("swizzle_quantize", "cuda")
def swizzle_quantize(src: Operand, groups, bits, symmetric, pipeline, nodes, dpn, err: Operand | None, beta):
    t = src.tensor
    with _launching(src, err) as (device, stream):
        data, _keep = _contiguous(src.tensor)
        q = cupy.empty((t.numel // codes_per_byte(bits),), np.int8)
        params = cupy.empty(params_shape(groups, symmetric), np.float32)
        e_ptr, e_dtype = _error(err)
        run(_launch.swizzle_quantize(t.dtype, data, q.data.ptr, params.data.ptr, t.numel, groups, bits,
                                      symmetric, pipeline, nodes, dpn, e_ptr, e_dtype, beta), device, stream)
        return _wrap(q, src), _wrap(params, src)


@registry.implements("quantized_reduction", "cuda")
def quantized_reduction(codes: Operand, params: Operand, in_groups, out_groups, bits, symmetric, devices,
                        half_accumulate, q_shape, err: Operand | None, beta):
    t = codes.tensor
    per = codes_per_byte(bits)
    n = t.numel * per // devices                     # values per slab = output values
    with _launching(codes, params, err) as (device, stream):
        q_ptr, _keep_q = _contiguous(codes.tensor)
        p_ptr, _keep_p = _contiguous(params.tensor)
        q = cupy.empty(q_shape, np.int8)
        out_params = cupy.empty(params_shape(out_groups, symmetric), np.float32)
        e_ptr, e_dtype = _error(err)
        run(_launch.quantized_reduction(q_ptr, p_ptr, q.data.ptr, out_params.data.ptr, n, in_groups, out_groups,
                                         devices, bits, symmetric, half_accumulate, e_ptr, e_dtype, beta),
             device, stream)
        return _wrap(q, codes), _wrap(out_params, codes)
