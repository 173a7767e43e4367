"""A stand-in for the few CuPy APIs dsquant/backends/cuda/device.py and dsquant/bench/gpu.py use,
backed by host memory, with RawModule kernels run by the CPU emulation of tests/emu. Lets a
machine without a GPU run the CUDA backend's Python code end to end (views, copies, out=, in
place, launch plans, streams, the benchmark's control flow) against the CPU path.

It models CuPy as dsquant relies on it (the calls and signatures of CuPy 13/14, and CuPy 14's
DeprecationWarning for ExternalStream, word for word); it cannot find a misunderstanding of CuPy
itself — tests/backends/test_gpu.py on a GPU does that."""
from __future__ import annotations

import ctypes
import itertools
import json
import sys
import threading
import types
import warnings
from pathlib import Path

import numpy as np

KDL_CUDA = 2


def claim_cuda(capsule, versioned: bool):
    """Rewrite a DLPack capsule's device type to CUDA (its memory stays host memory)."""
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    address = get(capsule, b"dltensor_versioned" if versioned else b"dltensor")
    # DLTensor.device.device_type: after version, manager_ctx, deleter, flags (versioned), data
    ctypes.c_int32.from_address(address + (40 if versioned else 8)).value = KDL_CUDA
    return capsule


def _host_view(ptr, shape, dtype, strides):
    dtype = np.dtype(dtype)
    if any(n == 0 for n in shape):
        return np.empty(shape, dtype)
    strides = strides if strides is not None else tuple(
        int(np.prod(shape[i + 1:], dtype=np.int64)) * dtype.itemsize for i in range(len(shape)))
    low = sum((n - 1) * s for n, s in zip(shape, strides) if s < 0)
    high = sum((n - 1) * s for n, s in zip(shape, strides) if s > 0)
    raw = (ctypes.c_char * (high - low + dtype.itemsize)).from_address(ptr + low)
    return np.ndarray(shape, dtype, buffer=raw, offset=-low, strides=strides)


class UnownedMemory:
    def __init__(self, ptr, size, owner, device_id=-1):
        self.ptr, self.size, self.owner, self.device_id = ptr, size, owner, device_id


class MemoryPointer:
    def __init__(self, mem, offset):
        self.mem, self.ptr = mem, mem.ptr + offset

    def copy_from_device_async(self, src, size, stream=None):
        ctypes.memmove(self.ptr, src.ptr, size)


class ndarray:   # noqa: N801 - CuPy's name
    def __init__(self, shape, dtype=float, memptr=None, strides=None):
        if memptr is None:                             # like cudaMalloc: 256-byte aligned
            dtype = np.dtype(dtype)
            raw = np.empty(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize + 256, np.uint8)
            start = -raw.ctypes.data % 256
            self._np = raw[start:start + raw.size - 256].view(dtype).reshape(shape)
            memptr = MemoryPointer(UnownedMemory(self._np.ctypes.data, self._np.nbytes, raw), 0)
        else:
            self._np = _host_view(memptr.ptr, tuple(shape), dtype, strides)
        self.data = memptr
        self.device = Device(0)

    @classmethod
    def _of(cls, array: np.ndarray, owner=None):
        a = cls.__new__(cls)
        a._np = array
        a.data = MemoryPointer(UnownedMemory(array.ctypes.data, array.nbytes, owner), 0)
        a.device = Device(0)
        return a

    shape = property(lambda self: self._np.shape)
    dtype = property(lambda self: self._np.dtype)
    size = property(lambda self: self._np.size)
    nbytes = property(lambda self: self._np.nbytes)
    itemsize = property(lambda self: self._np.itemsize)
    strides = property(lambda self: self._np.strides)

    def view(self, dtype):
        return ndarray._of(self._np.view(dtype), self)

    def astype(self, dtype):
        return ndarray._of(self._np.astype(dtype))

    def copy(self):
        return ndarray._of(self._np.copy())

    def get(self):
        return self._np.copy()

    def reshape(self, *shape):
        return ndarray._of(self._np.reshape(*shape), self)

    def __getitem__(self, key):
        return ndarray._of(self._np[key], self)

    def __setitem__(self, key, value):
        self._np[key] = value._np if isinstance(value, ndarray) else value

    @property
    def T(self):  # noqa: N802 - CuPy's name
        return ndarray._of(self._np.T, self)

    def __iadd__(self, other):
        self._np += other._np if isinstance(other, ndarray) else other
        return self

    def __itruediv__(self, other):
        self._np /= other._np if isinstance(other, ndarray) else other
        return self

    def _binary(op):   # noqa: N805 - builds the integer operators dsquant/backends/codes.py uses
        def apply(self, other):
            return ndarray._of(np.asarray(op(self._np, other._np if isinstance(other, ndarray) else other)))
        return apply

    __rshift__, __lshift__ = _binary(np.right_shift), _binary(np.left_shift)
    __and__, __or__, __sub__, __mul__ = _binary(np.bitwise_and), _binary(np.bitwise_or), _binary(np.subtract), \
        _binary(np.multiply)
    del _binary

    def __dlpack_device__(self):
        return (KDL_CUDA, 0)

    exports: list = []   # the stream= of every __dlpack__ call, in order

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        if stream == 0:
            raise BufferError("stream 0 is not allowed (DLPack)")
        ndarray.exports.append(stream)
        versioned = max_version is not None and max_version[0] >= 1
        capsule = self._np.__dlpack__(max_version=max_version) if versioned else self._np.__dlpack__()
        return claim_cuda(capsule, versioned)


ndarray.__module__ = "cupy._core.core"   # so dsquant recognises a CuPy array


def empty(shape, dtype=float):
    return ndarray(shape if isinstance(shape, tuple) else (shape,), dtype)


def empty_like(a):
    return empty(a.shape, a.dtype)


def asarray(a):
    return ndarray._of(np.ascontiguousarray(a).copy())


def ascontiguousarray(a):
    return ndarray._of(np.ascontiguousarray(a._np))


class Device:
    _current = 0
    compute_capability = "90"

    def __init__(self, device_id=None):
        self.id = Device._current if device_id is None else device_id
        self.attributes = {"MultiProcessorCount": 132}

    def __enter__(self):
        self._saved, Device._current = Device._current, self.id
        return self

    def __exit__(self, *exc):
        Device._current = self._saved
        return False


# CuPy 14's words when ExternalStream is constructed (cupy/cuda/stream.pyx), warned the same way here
# so that CI sees what warnings-as-errors makes of it on a GPU.
EXTERNAL_STREAM_DEPRECATION = ("ExternalStream is deprecated. Use Stream.from_external() instead to interoperate "
                               "with external streams that implement the CUDA stream protocol.")


class _BaseStream:
    _current = None
    _handles = itertools.count(0x5000, 0x10)   # cudaStream_t values of the streams "created" here

    def __init__(self, ptr, device_id):
        self.ptr, self.device_id = ptr, device_id

    def __enter__(self):
        self._saved, _BaseStream._current = _BaseStream._current, self
        return self

    def __exit__(self, *exc):
        _BaseStream._current = self._saved
        return False

    def __eq__(self, other):
        return isinstance(other, _BaseStream) and self.ptr == other.ptr

    def __hash__(self):
        return self.ptr

    def __cuda_stream__(self):
        return (0, self.ptr)

    def record(self, event=None):
        event = event or Event()
        event.record(self)
        return event

    def synchronize(self):
        pass


class Stream13(_BaseStream):
    """CuPy 13's Stream (CuPy's signature: a new stream unless null or ptds)."""

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        ptr = 0 if null else 2 if ptds else next(_BaseStream._handles)
        super().__init__(ptr, -1 if null or ptds else Device._current)


class Stream(Stream13):
    """CuPy 14's Stream: from_external as cupy/cuda/stream.pyx has it (the device is the current one)."""

    @classmethod
    def from_external(cls, obj):
        try:
            result = obj.__cuda_stream__()
        except AttributeError:
            raise AttributeError(f"Object of type {type(obj).__name__} does not implement the CUDA stream "
                                 "protocol (__cuda_stream__ method)") from None
        if not isinstance(result, tuple) or len(result) != 2:
            raise TypeError(f"__cuda_stream__() must return a 2-tuple of (version, stream_ptr), "
                            f"got {type(result).__name__}")
        version, ptr = result
        if not isinstance(version, int) or not isinstance(ptr, int):
            raise TypeError("__cuda_stream__() must return (int, int)")
        if version != 0:
            raise ValueError(f"__cuda_stream__() returned unsupported version {version}, only version 0 is supported")
        stream = cls.__new__(cls)
        _BaseStream.__init__(stream, ptr, Device._current)
        stream._foreign_stream_ref = obj
        return stream


class ExternalStream13(_BaseStream):
    def __init__(self, ptr, device_id=-1):
        super().__init__(ptr, device_id)


class ExternalStream(ExternalStream13):
    def __init__(self, ptr, device_id=-1):
        warnings.warn(EXTERNAL_STREAM_DEPRECATION, DeprecationWarning, stacklevel=2)
        super().__init__(ptr, device_id)


Stream13.null = Stream13(null=True)
Stream.null = Stream(null=True)


def get_current_stream(device_id=-1):
    return _BaseStream._current or Stream.null


class Event:
    pending = False   # set by a test: recorded events are not done until it is cleared

    def record(self, stream=None):
        pass

    @property
    def done(self):
        return not Event.pending

    def synchronize(self):
        pass


class RawModule:
    """Loads the json beside a cubin written by dsquant.backends.cuda.kernels and runs its kernels emulated."""
    emulator = None   # set by the fixture: tests/_cuda_emu.Emulator
    lock = threading.Lock()   # one launch at a time: ranks run as threads (tests/_fake_nccl.py)
    streams: list = []        # the stream (its cudaStream_t) of every launch, in order

    def __init__(self, *, path):
        meta = json.loads(Path(path).with_suffix(".json").read_text())
        self._names = {mangled: name for name, mangled in meta["lowered"].items()}

    def get_function(self, mangled):
        name = self._names[mangled]

        def launch(grid, block, args, stream=None, shared_mem=0):
            assert len(grid) == 1 and len(block) == 1
            with RawModule.lock:
                RawModule.streams.append(stream.ptr if stream is not None else None)
                RawModule.emulator.launch(name, grid[0], block[0], args)
        return launch


class _Runtime(types.SimpleNamespace):
    CUDARuntimeError = RuntimeError

    @staticmethod
    def getDeviceCount():  # noqa: N802 - CuPy's name
        return 1

    @staticmethod
    def getDeviceProperties(device_id):  # noqa: N802 - CuPy's name
        return {"name": b"emulated GPU"}


def module(emulator, version: int = 14) -> types.ModuleType:
    """The stand-in as a module object for sys.modules['cupy']: CuPy 14's streams (ExternalStream
    deprecated, Stream.from_external), or CuPy 13's with `version` 13."""
    RawModule.emulator = emulator
    cupy = types.ModuleType("cupy")
    cupy.__version__ = f"{version}.0.0 stand-in"
    streams = (Stream, ExternalStream) if version >= 14 else (Stream13, ExternalStream13)
    cuda = types.SimpleNamespace(
        Device=Device, Stream=streams[0], ExternalStream=streams[1], get_current_stream=get_current_stream,
        UnownedMemory=UnownedMemory, MemoryPointer=MemoryPointer, Event=Event, runtime=_Runtime(),
        get_elapsed_time=lambda start, end: 1.0)
    cuda.runtime.runtimeGetVersion = cuda.runtime.driverGetVersion = lambda: 13000
    cupy.cuda = cuda
    cupy.ndarray, cupy.empty, cupy.empty_like = ndarray, empty, empty_like
    cupy.asarray, cupy.ascontiguousarray, cupy.RawModule = asarray, ascontiguousarray, RawModule
    cupy.float16, cupy.float32, cupy.float64, cupy.nan = np.float16, np.float32, np.float64, np.nan
    cupy.int8, cupy.uint8 = np.int8, np.uint8
    cupy.zeros = lambda shape, dtype=float: asarray(np.zeros(shape, dtype))
    cupy.array_equal = lambda a, b: bool(np.array_equal(a._np, b._np))
    cupy.random = types.SimpleNamespace(
        standard_normal=lambda n, dtype=np.float64: asarray(np.random.default_rng(0).standard_normal(n).astype(dtype)))
    cupy.get_default_memory_pool = lambda: types.SimpleNamespace(free_all_blocks=lambda: None)
    return cupy


def forget_cuda_backend():
    """Drop the imported CUDA backend so the next GPU array imports it against the CuPy in sys.modules."""
    sys.modules.pop("dsquant.backends.cuda.device", None)
    package = sys.modules.get("dsquant.backends.cuda")
    if package is not None and hasattr(package, "device"):
        delattr(package, "device")


def installed(monkeypatch, emulator, version: int = 14):
    """Generator for fixtures: the stand-in as sys.modules['cupy'] (launch streams and exports
    recorded afresh) and a CUDA backend imported against it; both undone afterwards."""
    forget_cuda_backend()
    monkeypatch.setitem(sys.modules, "cupy", module(emulator, version))
    monkeypatch.setattr(RawModule, "streams", [])
    monkeypatch.setattr(ndarray, "exports", [])
    yield sys.modules["cupy"]
    forget_cuda_backend()
