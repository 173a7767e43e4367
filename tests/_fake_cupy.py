"""A stand-in for the few CuPy APIs dsquant/_cuda.py and _gpu_bench.py use, backed by host memory,
with RawModule kernels run by the CPU emulation of tests/emu. Lets a machine without a GPU run
the CUDA backend's Python code end to end (views, copies, out=, in place, launch plans, the
benchmark's control flow) against the CPU path.

It models CuPy as dsquant relies on it (the calls and signatures of CuPy 13/14); it cannot find a
misunderstanding of CuPy itself — tests/test_gpu.py on a GPU does that."""
from __future__ import annotations

import ctypes
import json
import threading
import types
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
    def T(self):
        return ndarray._of(self._np.T, self)

    def __iadd__(self, other):
        self._np += other._np if isinstance(other, ndarray) else other
        return self

    def __itruediv__(self, other):
        self._np /= other._np if isinstance(other, ndarray) else other
        return self

    def __dlpack_device__(self):
        return (KDL_CUDA, 0)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        if stream == 0:
            raise BufferError("stream 0 is not allowed (DLPack)")
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
    def __init__(self, device_id=0):
        self.id = device_id
        self.compute_capability = "90"
        self.attributes = {"MultiProcessorCount": 132}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Stream:
    _current = None

    def __init__(self, ptr=0, non_blocking=False):
        self.ptr = ptr

    def __enter__(self):
        self._saved, Stream._current = Stream._current, self
        return self

    def __exit__(self, *exc):
        Stream._current = self._saved
        return False

    def synchronize(self):
        pass


class ExternalStream(Stream):
    def __init__(self, ptr, device_id=-1):
        super().__init__(ptr)


Stream.null = Stream(0)


def get_current_stream():
    return Stream._current or Stream.null


class Event:
    def record(self, stream=None):
        pass

    def synchronize(self):
        pass


class RawModule:
    """Loads the json beside a cubin written by dsquant.backends.cuda.kernels and runs its kernels emulated."""
    emulator = None   # set by the fixture: tests/_cuda_emu.Emulator
    lock = threading.Lock()   # one launch at a time: ranks run as threads (tests/_fake_nccl.py)

    def __init__(self, *, path):
        meta = json.loads(Path(path).with_suffix(".json").read_text())
        self._names = {mangled: name for name, mangled in meta["lowered"].items()}

    def get_function(self, mangled):
        name = self._names[mangled]

        def launch(grid, block, args, stream=None, shared_mem=0):
            assert len(grid) == 1 and len(block) == 1
            with RawModule.lock:
                RawModule.emulator.launch(name, grid[0], block[0], args)
        return launch


class _Runtime(types.SimpleNamespace):
    CUDARuntimeError = RuntimeError

    @staticmethod
    def getDeviceCount():
        return 1

    @staticmethod
    def getDeviceProperties(device_id):
        return {"name": b"emulated GPU"}


def module(emulator) -> types.ModuleType:
    """The stand-in as a module object for sys.modules['cupy']."""
    RawModule.emulator = emulator
    cupy = types.ModuleType("cupy")
    cupy.__version__ = "stand-in"
    cuda = types.SimpleNamespace(
        Device=Device, Stream=Stream, ExternalStream=ExternalStream, get_current_stream=get_current_stream,
        UnownedMemory=UnownedMemory, MemoryPointer=MemoryPointer, Event=Event, runtime=_Runtime(),
        get_elapsed_time=lambda start, end: 1.0)
    cuda.runtime.runtimeGetVersion = lambda: 13000
    cupy.cuda = cuda
    cupy.ndarray, cupy.empty, cupy.empty_like = ndarray, empty, empty_like
    cupy.asarray, cupy.ascontiguousarray, cupy.RawModule = asarray, ascontiguousarray, RawModule
    cupy.float16, cupy.float32, cupy.float64, cupy.nan = np.float16, np.float32, np.float64, np.nan
    cupy.zeros = lambda shape, dtype=float: asarray(np.zeros(shape, dtype))
    cupy.array_equal = lambda a, b: bool(np.array_equal(a._np, b._np))
    cupy.random = types.SimpleNamespace(
        standard_normal=lambda n, dtype=np.float64: asarray(np.random.default_rng(0).standard_normal(n).astype(dtype)))
    cupy.get_default_memory_pool = lambda: types.SimpleNamespace(free_all_blocks=lambda: None)
    return cupy
