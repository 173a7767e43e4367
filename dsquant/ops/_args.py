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
    op = operand.host_intake(x) if allowed is None else None    # the common case, fast
    if op is not None:
        return op
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
    dst = operand.host_intake(out) or operand.intake(out, "out", _consumer_stream)
    s, d = src.tensor, dst.tensor
    operand.check_peer(src, dst, "out")
    if d.dtype != s.dtype:
        raise TypeError(f"out has dtype {d.dtype_name} but x has {s.dtype_name}; they must match")
    if d.shape != s.shape:
        raise ValueError(f"out has shape {d.shape} but x has {s.shape}; they must match")
    operand.check_writable(dst)
    operand.check_disjoint(src, dst, "x", "out", same_ok=True)
    return dst


def take_outputs(out: Any, src: Operand, shapes: tuple[tuple[int, ...], ...], names: tuple[str, ...],
                 allowed: tuple[tuple[str, ...], ...]) -> tuple[Operand, ...]:
    """`out=` of an op with several results (a tuple of arrays in `src`'s framework and device):
    each of its shape in `shapes`, a dtype in `allowed`, writable, sharing memory with neither
    `src` nor another output."""
    if not isinstance(out, (tuple, list)) or len(out) != len(shapes):
        raise TypeError(f"out must be a tuple ({', '.join(names)}) of {len(shapes)} arrays, got "
                        f"{type(out).__qualname__}{'' if not isinstance(out, (tuple, list)) else f' of {len(out)}'}")
    taken: list[Operand] = []
    for arr, shape, name, dtypes_ok in zip(out, shapes, names, allowed):
        dst = take_peer(arr, name, src, "x", dtypes_ok)
        if dst.tensor.shape != shape:
            raise ValueError(f"{name} has shape {dst.tensor.shape} but the result has shape {shape}")
        operand.check_writable(dst, name)
        operand.check_disjoint(src, dst, "x", name)
        for other, other_name in zip(taken, names):
            operand.check_disjoint(other, dst, other_name, name)
        taken.append(dst)
    return tuple(taken)


def take_values_out(out: Any, shape: tuple[int, ...], dtype: Any,
                    inputs: tuple[tuple[Operand, str], ...]) -> tuple[Operand | None, int]:
    """`out=` of an op that decodes codes into values of `shape` (the taken array or None), and the
    result's dtype code: `dtype`, else out's, else float32. `inputs` are the op's arrays with their
    names, codes first: out shares their framework and device and none of their memory, has any
    float dtype (the result's), the result's shape, and is writable."""
    dst = None
    if out is not None:
        like, like_name = inputs[0]
        dst = take_peer(out, "out", like, like_name, dtypes.NAMES)
        if dst.tensor.shape != shape:
            raise ValueError(f"out has shape {dst.tensor.shape} but the result has shape {shape}")
        operand.check_writable(dst)
        for op, name in inputs:
            operand.check_disjoint(op, dst, name, "out")
        if dtype is None:
            dtype = dst.tensor.dtype_name
    code = dtypes.parse("float32" if dtype is None else dtype).code
    if dst is not None and dst.tensor.dtype != code:
        raise TypeError(f"out has dtype {dst.tensor.dtype_name} but dtype is {dtypes.NAMES[code]}")
    return dst, code


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
