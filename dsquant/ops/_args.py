"""Arguments of the operations, parsed in one place: intake of arrays (consumed through DLPack on
the array's device, with the consumer stream the backend gives; dtypes, peers and outputs
checked) and the grouping (``groups=`` / ``block_size=`` / ``axis=``)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..core import checks, dtypes, registry
from ..core.grouping import Grouping
from ..core.grouping import resolve as grouping_of
from ..interop import operand
from ..interop.adapters import Adapter
from ..interop.operand import Operand


def _consumer_stream(adapter: Adapter, obj: Any, device_id: int) -> int | None:
    stream: int | None = registry.lookup("consumer_stream", "cuda")(adapter, obj, device_id)
    return stream


def device_of(op: Operand) -> str:
    return operand.device_kind(op.tensor.device_type)


def take(x: Any, name: str, allowed: tuple[str, ...] | None = None) -> Operand:
    """Consume `x`; its dtype must be one of `allowed` (names), by default the float dtypes."""
    op = operand.intake(x, name, _consumer_stream)
    device_of(op)                                # refuse unknown devices before anything else
    if allowed is None:
        if op.tensor.dtype < 0:
            raise TypeError(f"{name} has dtype {op.tensor.dtype_name}; dsquant quantizes {', '.join(dtypes.NAMES)}")
    elif op.tensor.dtype_name not in allowed:
        raise TypeError(f"{name} has dtype {op.tensor.dtype_name}; expected {' or '.join(allowed)}")
    return op


def take_peer(x: Any, name: str, first: Operand, first_name: str, allowed: tuple[str, ...]) -> Operand:
    """Consume `x`, a further array argument that must share `first`'s framework and device."""
    op = operand.intake(x, name, _consumer_stream)
    operand.check_peer(first, op, name, first_name)
    if op.tensor.dtype_name not in allowed:
        raise TypeError(f"{name} has dtype {op.tensor.dtype_name}; expected {' or '.join(allowed)}")
    return op


def take_out(out: Any, src: Operand) -> Operand:
    """`out=` of an op whose result has `src`'s dtype and shape."""
    dst = operand.intake(out, "out", _consumer_stream)
    s, d = src.tensor, dst.tensor
    operand.check_peer(src, dst, "out")
    if d.dtype != s.dtype:
        raise TypeError(f"out has dtype {d.dtype_name} but x has {s.dtype_name}; they must match")
    if d.shape != s.shape:
        raise ValueError(f"out has shape {d.shape} but x has {s.shape}; they must match")
    operand.check_writable(dst)
    return dst


def implementation(op_name: str, op: Operand) -> Callable[..., Any]:
    """The backend function for `op_name` on the device of `op`."""
    return registry.lookup(op_name, device_of(op))



def grouping(shape: tuple[int, ...], groups: int | None, block_size: int | Sequence[int] | None,
             axis: int | None) -> Grouping:
    """The grouping of an array of `shape` from an op's ``groups=`` / ``block_size=`` / ``axis=``
    (at most one; none: one group). See dsquant.core.grouping."""
    return grouping_of(shape, groups, block_size, axis)


def positive_groups(groups: int | None) -> None:
    """Checks `groups` before a framework op converts it (to int64)."""
    if groups is not None:
        checks.positive(groups, "groups")


def block_of(g: Grouping) -> tuple[int, ...] | None:
    """What a backend needs to know of a grouping beside its group count: the block when the
    groups are strided (the backend then works in group order, core.grouping.group_order), else
    None (the groups are contiguous runs of the array in C order, DeepSpeed's layout)."""
    return g.block_size if g.strided else None
