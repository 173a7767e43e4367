"""Framework detection without importing any framework, intake of arrays, and wrapping results
in the caller's framework.

A framework is recognised from the module of the array's type (``sys.modules`` already holds it
whenever such an array exists), so ``import dsquant`` imports none of torch, jax or cupy.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from . import _array

NUMPY, TORCH, JAX, CUPY, DLPACK = "numpy", "torch", "jax", "cupy", "dlpack"
_ROOTS = {"numpy": NUMPY, "torch": TORCH, "jax": JAX, "jaxlib": JAX, "cupy": CUPY}
_BF16 = 1


def framework_of(obj) -> str | None:
    """The framework an array belongs to, ``DLPACK`` for other DLPack producers, None for non-arrays."""
    root = type(obj).__module__.partition(".")[0]
    if root in _ROOTS:
        fw = _ROOTS[root]
        if fw == NUMPY and not isinstance(obj, np.ndarray):
            return None   # numpy scalars and other numpy objects are not arrays to quantize
        return fw
    return DLPACK if hasattr(type(obj), "__dlpack__") else None


@dataclass
class Operand:
    """An array taken in through DLPack, with what is needed to answer in its own framework."""
    obj: object              # what the user passed
    framework: str
    tensor: _array.Tensor    # owning DLPack view (keeps the producer's memory alive)

    @property
    def on_cpu(self) -> bool:
        return self.tensor.device_type in (_array.DEVICE_CPU, _array.DEVICE_CUDA_HOST)


def intake(obj, name: str, stream=None) -> Operand:
    """Consume `obj` (argument `name`) through DLPack."""
    fw = framework_of(obj)
    if fw is None:
        raise TypeError(f"{name} must be an array (NumPy, CuPy, torch, JAX or any __dlpack__ producer), "
                        f"got {type(obj).__module__}.{type(obj).__qualname__}")
    as_dtype = -1
    source = obj
    if fw == NUMPY and obj.dtype.name == "bfloat16":
        source, as_dtype = obj.view(np.uint16), _BF16   # NumPy cannot export bfloat16 itself
    elif fw == TORCH and obj.requires_grad:
        source = obj.detach()                            # same storage; DLPack refuses grad tensors
    try:
        tensor = _array.consume(source, stream, as_dtype)
    except (TypeError, RuntimeError, ValueError) as exc:
        raise BufferError(f"{name}: {type(obj).__qualname__} could not be exported through DLPack: {exc}") from exc
    return Operand(obj, fw, tensor)


def is_immutable(op: Operand) -> bool:
    """True for arrays that must never be written through their memory."""
    if op.framework == JAX or op.tensor.read_only:
        return True
    if op.framework == NUMPY and not op.obj.flags.writeable:
        return True
    return False


def wrap_host(buffer: _array.HostBuffer, framework: str, dtype_name: str):
    """The caller-framework array that owns `buffer` (zero-copy through DLPack)."""
    if framework == TORCH:
        return sys.modules["torch"].from_dlpack(buffer)
    if framework == JAX:
        import jax.dlpack  # already imported by whoever made the input
        return jax.dlpack.from_dlpack(buffer)
    arr = np.from_dlpack(buffer)
    if dtype_name == "bfloat16":
        import ml_dtypes  # present: the input was an ml_dtypes array
        arr = arr.view(ml_dtypes.bfloat16)
    return arr


def numpy_needs_uint_view(framework: str, dtype: int) -> bool:
    """NumPy receives bfloat16 results as uint16 and views them as ml_dtypes.bfloat16."""
    return framework in (NUMPY, DLPACK) and dtype == _BF16
