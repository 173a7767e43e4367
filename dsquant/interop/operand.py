"""Intake of arrays through DLPack: an :class:`Operand` is the caller's object, its framework's
adapter and an owning view of its memory. Checks that concern any array argument (peers, writable
outputs) live here too."""
from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _array
from .adapters import Adapter, adapter_of, host_adapter

CPU_DEVICES = (_array.DEVICE_CPU, _array.DEVICE_CUDA_HOST)
CUDA_DEVICES = (_array.DEVICE_CUDA, _array.DEVICE_CUDA_MANAGED)


@dataclass(slots=True)
class Operand:
    """An array taken in through DLPack, with what is needed to answer in its own framework."""
    obj: object              # what the user passed
    adapter: Adapter
    tensor: _array.Tensor    # owning DLPack view (keeps the producer's memory alive)

    @property
    def framework(self) -> str:
        return self.adapter.name

    @property
    def on_cpu(self) -> bool:
        return self.tensor.device_type in CPU_DEVICES

    @property
    def immutable(self) -> bool:
        """True for arrays that must never be written through their memory."""
        return self.tensor.read_only or self.adapter.immutable(self.obj)


def device_kind(device_type: int) -> str:
    """The backend name ("cpu", "cuda") for a DLPack device type; BufferError for others."""
    if device_type in CPU_DEVICES:
        return "cpu"
    if device_type in CUDA_DEVICES:
        return "cuda"
    raise BufferError(f"arrays on DLPack device type {device_type} are not supported "
                      f"(dsquant runs on the CPU and on CUDA GPUs)")


def intake(obj: Any, name: str, consumer_stream: Callable[[Adapter, Any, int], int | None] | None = None) -> Operand:
    """Consume `obj` (argument `name`) through DLPack, exporting it once.

    For arrays on a CUDA device, ``consumer_stream(adapter, obj, device_id)`` gives the stream the
    kernels will run on; it is passed to ``__dlpack__`` so the producer orders its pending work on
    `obj` before them."""
    adapter = adapter_of(obj)
    if adapter is None:
        raise TypeError(f"{name} must be an array (NumPy, CuPy, torch, JAX or any __dlpack__ producer), "
                        f"got {type(obj).__module__}.{type(obj).__qualname__}")
    source, relabel = adapter.exportable(obj)
    claimed = _claimed_device(source, obj, name)
    stream = None
    if consumer_stream is not None and claimed is not None and claimed[0] in CUDA_DEVICES:
        try:
            stream = consumer_stream(adapter, obj, claimed[1])
        except ImportError:
            # no CUDA backend here; but a producer whose memory is not on CUDA at all is refused
            # as what it is (the capsule is only looked at, never used, so no stream is needed)
            _check_claim(_consume(source, None, relabel, obj, name), claimed, obj, name)
            raise
    tensor = _consume(source, stream, relabel, obj, name)
    _check_claim(tensor, claimed, obj, name)
    if tensor.device_type in CUDA_DEVICES and tensor.data % tensor.itemsize:
        raise BufferError(f"{name}: its data address {tensor.data:#x} is not a multiple of the "
                          f"element size {tensor.itemsize}; pass an aligned array")
    return Operand(obj, adapter, tensor)


def host_intake(obj: Any) -> Operand | None:
    """The common case taken in fast (no DLPack capsule; checks of a few nanoseconds each): a
    C-contiguous NumPy array (exactly ``numpy.ndarray``) or torch CPU tensor of float16, float32
    or float64 (torch: bfloat16 too) that needs no framework op (see Adapter.graph_device). None
    for anything else, which :func:`intake` takes with every check. What it gives is what
    :func:`intake` would give, so every later check and backend works on it unchanged."""
    adapter = host_adapter(obj)
    if adapter is None:
        return None
    tensor = adapter.host_tensor(obj)
    return None if tensor is None else Operand(obj, adapter, tensor)


def _claimed_device(source: Any, obj: Any, name: str) -> tuple[int, int] | None:
    """The (device type, device id) `source` reports through ``__dlpack_device__`` (None without
    one); BufferError when it raises or returns anything but two integers."""
    if not hasattr(source, "__dlpack_device__"):
        return None
    try:
        device_type, device_id = (operator.index(v) for v in source.__dlpack_device__())
    except Exception as exc:
        raise BufferError(f"{name}: {type(obj).__qualname__}.__dlpack_device__() must return (device type, "
                          f"device id), two integers; it gave {exc!r}") from exc
    return device_type, device_id


def _consume(source: Any, stream: int | None, relabel: tuple[int, int] | None, obj: Any, name: str) -> _array.Tensor:
    try:
        return _array.consume(source, stream, relabel)
    except (TypeError, RuntimeError, ValueError) as exc:
        raise BufferError(f"{name}: {type(obj).__qualname__} could not be exported through DLPack: {exc}") from exc


def _check_claim(tensor: _array.Tensor, claimed: tuple[int, int] | None, obj: Any, name: str) -> None:
    """The device a producer reports must be the device its capsule says the memory is on."""
    if claimed is not None and claimed != (tensor.device_type, tensor.device_id):
        raise BufferError(f"{name}: {type(obj).__qualname__}.__dlpack_device__() says {claimed} but its DLPack "
                          f"capsule holds memory on {(tensor.device_type, tensor.device_id)} (device type, id)")


def check_peer(first: Operand, other: Operand, name: str, first_name: str = "x") -> None:
    """`other` (argument `name`) must share `first`'s framework and device."""
    s, d = first.tensor, other.tensor
    if other.adapter is not first.adapter and other.framework != first.framework:
        raise TypeError(f"{name} is a {other.framework} array but {first_name} is a {first.framework} array; "
                        f"{name} must be of the input's framework")
    if d.device_type != s.device_type or d.device_id != s.device_id:
        raise BufferError(f"{name} is on device {(d.device_type, d.device_id)} but {first_name} is on "
                          f"{(s.device_type, s.device_id)}")


def check_writable(dst: Operand, name: str = "out") -> None:
    d = dst.tensor
    if dst.immutable:
        raise BufferError(f"{name} is read-only or immutable")
    if d.has_overlap_or_reversal:
        raise BufferError(f"{name} has zero or negative strides {d.strides}; results cannot be written there")



def check_disjoint(a: Operand, b: Operand, a_name: str, b_name: str, same_ok: bool = False) -> None:
    """BufferError when `a` and `b` share memory (their byte ranges overlap: a result written
    there would change an input while it is read). `same_ok`: exactly the same view is fine (an
    elementwise op in place)."""
    relation = _array.overlap(a.tensor, b.tensor)       # 0 disjoint, 1 the same view, 2 overlapping
    if relation == 0 or (relation == 1 and same_ok):
        return
    (lo_a, hi_a), (lo_b, hi_b) = _array.byte_span(a.tensor), _array.byte_span(b.tensor)
    what = "" if not same_ok else " (only exactly the same array is allowed, to work in place)"
    raise BufferError(f"{a_name} and {b_name} share memory: bytes {lo_a:#x}..{hi_a:#x} and {lo_b:#x}..{hi_b:#x} "
                      f"overlap{what}; pass an {b_name} that does not overlap {a_name}")
