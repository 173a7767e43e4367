"""One adapter per framework: everything dsquant knows about NumPy, torch, JAX, CuPy and other
DLPack producers lives here (in the style of nvmath-python's tensor wrappers).

A framework is recognised from the module of the array's type (``sys.modules`` already holds it
whenever such an array exists), so ``import dsquant`` imports none of torch, jax or cupy. An
adapter says how to export an array (``exportable``), whether it may be written (``immutable``),
which CUDA stream its caller expects work on (``cuda_stream``; None: the backend's current one)
and how a result becomes an array of the framework again (``from_dlpack``).
"""
from __future__ import annotations

import re
import sys
from typing import Any

import numpy as np

from ..core import dtypes, fp_formats
from . import _array

# NumPy before 2.1 cannot export a read-only array through DLPack, and NumPy before 2.3 marks
# every array it imports through DLPack read-only (even dsquant's fresh results).
_NUMPY_EXPORTS_READ_ONLY = tuple(int(p) for p in np.__version__.split(".")[:2]) >= (2, 1)


class _WritableAlias:
    """Presents `arr`'s memory as writable through the array interface, keeping `arr` alive.
    For results, which dsquant owns, that is the truth; for read-only inputs on old NumPy it only
    lets them be exported: dsquant never writes into inputs it has judged immutable, and
    immutability is judged on the caller's object, not on this alias."""
    __slots__ = ("base", "__array_interface__")

    def __init__(self, arr: np.ndarray):
        self.base = arr
        interface = arr.__array_interface__
        self.__array_interface__ = {**interface, "data": (interface["data"][0], False)}


def _writable(arr: np.ndarray) -> np.ndarray:
    return arr if arr.flags.writeable else np.asarray(_WritableAlias(arr))


class Adapter:
    name = "dlpack"          # any other __dlpack__ producer: results come back as NumPy / CuPy arrays
    roots: tuple[str, ...] = ()
    bfloat16_as_bits = True  # host bfloat16 results are exported as uint16 (NumPy has no bfloat16 DLPack)
    # GPU inputs must stay referenced until the kernels reading them are done (not only until the
    # call returns): the framework may otherwise free and reuse their memory for work on a stream
    # that is not ordered after those kernels.
    hold_until_done = False

    def exportable(self, obj: Any) -> tuple[Any, tuple[int, int] | None]:
        """(the object whose __dlpack__ to call, the DLPack (code, bits) to relabel its elements
        with, or None)."""
        return obj, None

    def immutable(self, obj: Any) -> bool:
        return False

    def cuda_stream(self, obj_or_none: Any, device_id: int) -> int | None:
        """The cudaStream_t the caller's work runs on, or None for the CUDA backend's current stream."""
        return None

    def from_host(self, buffer: Any, dtype_name: str) -> Any:
        """A dsquant host buffer as an array of this framework (zero-copy)."""
        return NUMPY.from_host(buffer, dtype_name)

    def host_tensor(self, obj: Any) -> Any:
        """An ``_array.Tensor`` over `obj` when it is a C-contiguous host array of a float dtype
        that needs no framework op (see graph_device), read without DLPack; else None (then
        DLPack intake, with every check). Cheap checks only: this is the per-call fast path."""
        return None

    def from_device(self, result: Any, relabel: Any) -> Any:
        """A CUDA result (a CuPy array; `relabel`: a DLPack producer that relabels its bits as
        bfloat16, or None) as an array of this framework (zero-copy)."""
        return result

    def cast_float32(self, values: Any, dtype_name: str) -> Any:
        """A float32 NumPy/CuPy array as an array of this framework in `dtype_name` (rounded to
        nearest even), on the same device."""
        if dtype_name == "bfloat16":
            import ml_dtypes
            return values.astype(ml_dtypes.bfloat16)
        return values.astype(np.dtype(dtype_name))

    def shared_view(self, values: Any) -> Any:
        """An array of this framework sharing `values`' memory (a NumPy or CuPy array), or None
        when the framework cannot write through such a view."""
        return values

    def float8_view(self, codes: Any, name: str) -> Any:
        """uint8 FP8 codes (a result of this framework) viewed as its float8 type `name`
        (ml_dtypes' spelling: float8_e4m3fn, float8_e5m2), zero-copy."""
        raise TypeError(f"{self.name} arrays have no {name} type here; pass as_float8=False (uint8 codes)")

    def graph_device(self, obj: Any, autograd: bool = True, in_place: bool = False) -> str | None:
        """The registry device whose implementation records a call on `obj` in the framework's
        own op graph (autograd, tracing, version counters of in-place writes), or None to run
        the call on the array directly."""
        return None


class NumpyAdapter(Adapter):
    name = "numpy"
    roots = ("numpy",)

    def is_array(self, obj: Any) -> bool:
        return isinstance(obj, np.ndarray)   # numpy scalars and other numpy objects are not arrays

    def exportable(self, obj: Any) -> tuple[Any, tuple[int, int] | None]:
        relabel = None
        dtype = obj.dtype                    # (dtype.name costs microseconds: looked at for user dtypes only)
        # ml_dtypes types, which NumPy cannot export through DLPack (float8_e5m2 says kind "f")
        if dtype.kind == "V" or (dtype.kind == "f" and dtype.itemsize == 1):
            if dtype.name == "bfloat16":
                obj, relabel = obj.view(np.uint16), dtypes.BFLOAT16.dlpack
            elif dtype.name in fp_formats.FLOAT8:
                obj, relabel = obj.view(np.uint8), (fp_formats.FLOAT8[dtype.name].dlpack, 8)
        if not _NUMPY_EXPORTS_READ_ONLY:
            obj = _writable(obj)
        return obj, relabel

    def immutable(self, obj: Any) -> bool:
        return not obj.flags.writeable

    def host_tensor(self, obj: Any) -> Any:
        code = _HOST_DTYPES.get(obj.dtype)   # float16/32/64 in native byte order
        return None if code is None else _array.host_view(obj, code)   # the buffer protocol, C-contiguous

    def float8_view(self, codes: Any, name: str) -> Any:
        import ml_dtypes
        return codes.view(getattr(ml_dtypes, name))

    def from_host(self, buffer: Any, dtype_name: str) -> Any:
        # NumPy's C API (no frombuffer argument parsing, no reshape), writable on every NumPy
        # (the array keeps the buffer alive; the buffer frees its memory when the array goes)
        return buffer.as_numpy(_numpy_dtype(dtype_name))


_NUMPY_DTYPES: dict[str, np.dtype] = {}
_UINT16 = np.dtype(np.uint16)
# the NumPy dtypes the per-call fast path takes (native byte order: a swapped dtype compares unequal)
_HOST_DTYPES = {np.dtype(d.name): d.code for d in dtypes.FLOAT_DTYPES if d.name != "bfloat16"}


def _numpy_dtype(name: str) -> np.dtype:
    dtype = _NUMPY_DTYPES.get(name)
    if dtype is None:
        if name == "bfloat16":
            import ml_dtypes  # present: the input was an ml_dtypes array
            dtype = np.dtype(ml_dtypes.bfloat16)
        else:
            dtype = np.dtype(name)
        _NUMPY_DTYPES[name] = dtype
    return dtype


class TorchAdapter(Adapter):
    name = "torch"
    roots = ("torch",)
    bfloat16_as_bits = False

    def exportable(self, obj: Any) -> tuple[Any, tuple[int, int] | None]:
        return (obj.detach() if obj.requires_grad else obj), None   # same storage; DLPack refuses grad tensors

    _codes: dict[Any, int] = {}

    def dtype_code(self, torch_dtype: Any) -> int | None:
        """dsquant's code of a torch dtype (None for dtypes dsquant does not quantize)."""
        if not self._codes:
            torch = sys.modules["torch"]
            self._codes.update({getattr(torch, d.name): d.code for d in dtypes.FLOAT_DTYPES})
        return self._codes.get(torch_dtype)

    def host_tensor(self, obj: Any) -> Any:
        torch = sys.modules["torch"]
        if torch.compiler.is_compiling():    # first: torch.compile traces this (the custom op's path)
            return None
        if not obj.is_cpu or obj.layout is not torch.strided or not obj.is_contiguous() or obj.is_neg():
            return None                      # (a negative view's memory holds the unnegated values)
        code = self.dtype_code(obj.dtype)
        if code is None or self.graph_device(obj) is not None:
            return None
        return _array.host_tensor(obj, obj.data_ptr(), tuple(obj.shape), code)

    def cuda_stream(self, obj: Any, device_id: int) -> int | None:
        stream: int = sys.modules["torch"].cuda.current_stream(device_id).cuda_stream
        return stream

    def from_host(self, buffer: Any, dtype_name: str) -> Any:
        torch = sys.modules["torch"]
        # through a NumPy array over the buffer (NUMPY.from_host): a third of the cost of
        # torch.frombuffer and a view to the shape; the tensor keeps the array, the array the
        # buffer, and the buffer frees its memory when the last of them goes
        if dtype_name == "bfloat16":       # (NumPy has none torch takes: its bits, relabelled)
            return torch.from_numpy(buffer.as_numpy(_UINT16)).view(torch.bfloat16)
        return torch.from_numpy(buffer.as_numpy(_numpy_dtype(dtype_name)))

    def from_device(self, result: Any, relabel: Any) -> Any:
        return sys.modules["torch"].from_dlpack(relabel or result)

    def float8_view(self, codes: Any, name: str) -> Any:
        return codes.view(getattr(sys.modules["torch"], name))

    def cast_float32(self, values: Any, dtype_name: str) -> Any:
        torch = sys.modules["torch"]
        return torch.from_dlpack(values).to(getattr(torch, dtype_name))

    def shared_view(self, values: Any) -> Any:
        return sys.modules["torch"].from_dlpack(values)

    def graph_device(self, obj: Any, autograd: bool = True, in_place: bool = False) -> str | None:
        # torch.library custom ops (dsquant/torch.py): in-place calls always (version counter),
        # tensors that record autograd, and everything torch.compile traces
        torch = sys.modules["torch"]
        if in_place or torch.compiler.is_compiling() or (autograd and obj.requires_grad and torch.is_grad_enabled()):
            return TORCH_OPS
        return None


TORCH_OPS = "torch.library"     # the registry device of dsquant's torch custom ops


class JaxAdapter(Adapter):
    name = "jax"
    roots = ("jax", "jaxlib")
    bfloat16_as_bits = False
    hold_until_done = True   # a temporary's buffer goes back to XLA when its last reference drops
    _cpu_only: bool | None = None
    _ffi_ok: bool | None = None          # whether this jax runs dsquant's XLA FFI handlers (JAX_FFI_MIN)

    def immutable(self, obj: Any) -> bool:
        return True

    def cuda_stream(self, obj: Any, device_id: int) -> int | None:
        """The stream JAX gives consumers of its arrays on that GPU, as ``jax.dlpack.from_dlpack``
        does (``Device.get_stream_for_external_ready_events``): JAX orders its pending work on the
        input before it, and takes a result handed back on it as ready when that stream's work is
        done. None (the CuPy stream) where JAX has no such stream."""
        devices = obj.devices() if obj is not None and hasattr(obj, "devices") else ()
        device = next(iter(devices), None)
        if device is None or not hasattr(device, "get_stream_for_external_ready_events"):
            return None
        try:
            return int(device.get_stream_for_external_ready_events())
        except Exception as exc:   # JaxRuntimeError, whose class moves between jaxlib versions
            if "UNIMPLEMENTED" in str(exc):
                return None
            raise

    def from_host(self, buffer: Any, dtype_name: str) -> Any:
        import jax.dlpack  # already imported by whoever made the input
        return jax.dlpack.from_dlpack(buffer)

    def from_device(self, result: Any, relabel: Any) -> Any:
        import jax.dlpack
        return jax.dlpack.from_dlpack(relabel or result)

    def float8_view(self, codes: Any, name: str) -> Any:
        jax = sys.modules["jax"]
        return jax.lax.bitcast_convert_type(codes, getattr(jax.numpy, name))

    def cast_float32(self, values: Any, dtype_name: str) -> Any:
        jax = sys.modules["jax"]
        return jax.dlpack.from_dlpack(values).astype(getattr(jax.numpy, dtype_name))

    def shared_view(self, values: Any) -> Any:
        return None                          # JAX arrays are immutable

    def graph_device(self, obj: Any, autograd: bool = True, in_place: bool = False) -> str | None:
        # XLA FFI calls (dsquant/jax.py): every traced value (jit, grad, vmap), and concrete arrays
        # on the CPU too (a cached jitted call costs less than a DLPack round trip); GPU arrays
        # outside a trace take the CUDA backend through DLPack
        jax = sys.modules["jax"]
        if self._ffi_ok is None:
            self._ffi_ok = tuple(int(p) for p in re.findall(r"\d+", jax.__version__)[:2]) >= JAX_FFI_MIN
        if not self._ffi_ok:                 # an older jax: eager arrays through DLPack, no traced ones
            if isinstance(obj, jax.core.Tracer):
                raise NotImplementedError(
                    f"dsquant under jax.jit / jax.grad / jax.vmap needs jax >= {'.'.join(map(str, JAX_FFI_MIN))} "
                    f"(the XLA FFI API its handlers are built against); this is jax {jax.__version__}, with which "
                    f"dsquant takes eager JAX arrays only")
            return None
        if in_place or isinstance(obj, jax.core.Tracer):
            return JAX_FFI
        if self._cpu_only is None:           # JAX has no accelerator: every array is on the CPU
            self._cpu_only = jax.default_backend() == "cpu"
        return JAX_FFI if self._cpu_only or all(d.platform == "cpu" for d in obj.devices()) else None


JAX_FFI = "jax.ffi"             # the registry device of dsquant's XLA FFI calls
# The oldest jax dsquant's XLA FFI calls have run with (jaxlib 0.4.38's FFI API, 0.1, refuses the
# handlers, built against the vendored C API 0.3; versions in between are untested)
JAX_FFI_MIN = (0, 10)


class CupyAdapter(Adapter):
    name = "cupy"
    roots = ("cupy",)


class GenericAdapter(Adapter):
    def shared_view(self, values: Any) -> Any:
        return None                          # no way to make one of an unknown producer's arrays


NUMPY, TORCH, JAX, CUPY, DLPACK = NumpyAdapter(), TorchAdapter(), JaxAdapter(), CupyAdapter(), GenericAdapter()
_BY_ROOT = {root: a for a in (NUMPY, TORCH, JAX, CUPY) for root in a.roots}


def adapter_of(obj: Any) -> Adapter | None:
    """The adapter of `obj`'s framework, DLPACK for other DLPack producers, None for non-arrays."""
    adapter = _BY_ROOT.get(type(obj).__module__.partition(".")[0])
    if adapter is not None:
        if adapter is NUMPY and not NUMPY.is_array(obj):
            return None
        return adapter
    return DLPACK if hasattr(type(obj), "__dlpack__") else None


def host_adapter(obj: Any) -> Adapter | None:
    """The adapter of `obj` when it is exactly a NumPy array or a torch tensor (the types the
    per-call fast path takes, see Adapter.host_tensor), else None."""
    cls = type(obj)
    if cls is np.ndarray:
        return NUMPY
    torch = sys.modules.get("torch")
    return TORCH if torch is not None and cls is torch.Tensor else None


def graph_device(obj: Any, autograd: bool = True, in_place: bool = False) -> str | None:
    """The registry device of the framework op that must record a call on `obj` (see
    Adapter.graph_device), or None. torch and JAX have such ops; written so that torch.compile can
    trace it (no string operations on type names)."""
    if type(obj) is np.ndarray:              # the common case first: NumPy arrays have no graph
        return None
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return TORCH.graph_device(obj, autograd, in_place)
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(obj, jax.Array):
        return JAX.graph_device(obj, autograd, in_place)
    return None
