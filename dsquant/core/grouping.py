"""How the elements of an array fall into groups: DeepSpeed's ``groups=`` (contiguous runs in C
order), torchao's ``block_size=`` (a block per axis) and torch's per-channel ``axis=``.

Every grouping is resolved to a :class:`Grouping`. The kernels only know DeepSpeed's form (group
``g`` = elements ``g*S .. (g+1)*S - 1`` of a C-order buffer), so a block grouping is run through
:func:`group_order`: a view of the array, in which C order visits the elements group by group
(the group-grid axes first, then the axes inside a block). When that view is the array itself in
C order (blocks along the last axis, one group per row, per-channel along axis 0, ...), the kernels
read the array directly: same bits, no copy. Otherwise (per-channel along a later axis, 2-D tiles)
the backends copy the elements into group order and back (docs/grouping.md says why and what it
costs).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from . import checks

KINDS = ("groups", "block_size", "axis")


@dataclass(frozen=True)
class Grouping:
    """The groups of an array of `shape`.

    Attributes:
        shape: the shape of the values.
        kind: ``"groups"``, ``"block_size"`` or ``"axis"``: how the caller gave it.
        groups: the number of groups.
        block_size: elements per group along each axis (one entry per axis of `shape`), or None
            for the ``groups=`` form (contiguous runs of ``numel // groups`` elements in C order,
            which need not line up with the axes).
        axis: the per-channel axis (``kind == "axis"``), else None.
    """

    shape: tuple[int, ...]
    kind: str
    groups: int
    block_size: tuple[int, ...] | None = None
    axis: int | None = None

    @property
    def grid(self) -> tuple[int, ...]:
        """The shape of the grid of groups: ``(groups,)`` for the ``groups=`` form, else one entry
        per axis (``shape[i] // block_size[i]``) for ``block_size=``, ``(shape[axis],)`` for
        ``axis=``. Params are ``grid + (1,)`` or ``grid + (2,)``."""
        if self.block_size is None:
            return (self.groups,)
        if self.axis is not None:
            return (self.shape[self.axis] if self.groups else 0,)
        return tuple([n // b if b else 0 for n, b in zip(self.shape, self.block_size)])

    @property
    def strided(self) -> bool:
        """True when the groups are not contiguous runs of the array in C order (the backends
        then copy into group order and back)."""
        return self.block_size is not None and not _in_c_order(self.shape, self.block_size)

    def arguments(self) -> dict[str, int | tuple[int, ...]]:
        """The keyword argument that gives this grouping again (``{"block_size": (1, 128)}``, ...)."""
        if self.kind == "groups":
            return {"groups": self.groups}
        if self.kind == "axis":
            assert self.axis is not None
            return {"axis": self.axis}
        assert self.block_size is not None
        return {"block_size": self.block_size}

    def params_shape(self, symmetric: bool) -> tuple[int, ...]:
        """The shape of quantize's params for this grouping: the grid, then 1 (symmetric) or 2."""
        return self.grid + (1 if symmetric else 2,)

    def __str__(self) -> str:
        (name, value), = self.arguments().items()
        return f"{name}={value}"


def resolve(shape: Sequence[int], groups: int | None = None, block_size: int | Sequence[int] | None = None,
            axis: int | None = None) -> Grouping:
    """The grouping of an array of `shape` given by at most one of `groups`, `block_size`, `axis`
    (none: one group). ValueError/TypeError naming the argument otherwise."""
    shape = tuple(shape)
    given = [name for name, v in (("groups", groups), ("block_size", block_size), ("axis", axis)) if v is not None]
    # (list comprehensions, not generators, here and below: torch.compile traces this module)
    if len(given) > 1:
        raise ValueError(f"give at most one of groups, block_size, axis (got {' and '.join(given)}); "
                         f"groups: contiguous runs in C order, block_size: a block per axis, axis: per channel")
    numel = math.prod(shape)
    if block_size is not None:
        return Grouping(shape, "block_size", *_blocks(shape, block_size))
    if axis is not None:
        axis = checks.int_arg(axis, "axis")
        if not -len(shape) <= axis < len(shape):
            raise ValueError(f"axis={axis} is out of range for an array of shape {shape} "
                             f"(axes {-len(shape)}..{len(shape) - 1})" if shape else
                             f"axis={axis} needs an array with at least one dimension, got shape (); use groups=1")
        axis %= len(shape)
        block = tuple([1 if i == axis else n for i, n in enumerate(shape)])
        return Grouping(shape, "axis", _count(shape, block), block, axis)
    return Grouping(shape, "groups", checks.groups(1 if groups is None else groups, numel))


def _blocks(shape: tuple[int, ...], block_size: int | Sequence[int]) -> tuple[int, tuple[int, ...]]:
    if not isinstance(block_size, Sequence) or isinstance(block_size, (str, bytes)):
        size = checks.int_arg(block_size, "block_size")   # type: ignore[arg-type]  # TypeError for anything else
        if not shape:
            raise ValueError(f"block_size={size} runs along the last axis, but x is 0-d; use groups=1")
        block = (1,) * (len(shape) - 1) + (size,)
    else:
        block = tuple([checks.int_arg(b, f"block_size[{i}]") for i, b in enumerate(block_size)])
        if len(block) > len(shape) or not block:
            raise ValueError(f"block_size={block} has {len(block)} entries but x has shape {shape}; give one "
                             f"entry per axis (1 keeps each index of an axis apart), or an int for the last axis")
        block = (1,) * (len(shape) - len(block)) + block    # torchao's rule: missing leading axes are 1
    for i, (n, b) in enumerate(zip(shape, block)):
        if b <= 0:
            raise ValueError(f"block_size={block}: entry {i} is {b}; block sizes are positive")
        if n % b:
            raise ValueError(f"block_size={block} does not divide shape {shape} along axis {i} ({n} % {b} = {n % b}); "
                             f"pad x to a multiple of {b} or choose a block size that divides {n}")
    return _count(shape, block), block


def _count(shape: tuple[int, ...], block: tuple[int, ...]) -> int:
    """Groups of the blocks; an empty array has none (its params have a 0 in their shape), unlike
    groups=, where an empty array is one group as in DeepSpeed."""
    return math.prod([n // b if b else 0 for n, b in zip(shape, block)]) if math.prod(shape) else 0


def c_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """C-order strides (in elements) of `shape`."""
    strides, step = [], 1
    for n in reversed(tuple(shape)):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def group_order(shape: Sequence[int], strides: Sequence[int],
                block: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(shape, strides) of a view of the array (`shape`, `strides` in elements) whose C order
    visits its elements group by group, each group in C order: the grid axes first, then the
    axes within a block. Axes of length 1 are dropped and neighbours that step evenly merged, so
    a transpose stays a 2-d view."""
    dims = [(n // b, b * s) for n, b, s in zip(shape, block, strides)] + list(zip(block, strides))
    out: list[tuple[int, int]] = []
    for n, s in dims:
        if n == 1:
            continue
        if out and out[-1][1] == n * s:                    # the previous axis steps over this one whole
            out[-1] = (out[-1][0] * n, s)
        else:
            out.append((n, s))
    return tuple([n for n, _ in out]), tuple([s for _, s in out])


def _in_c_order(shape: tuple[int, ...], block: tuple[int, ...]) -> bool:
    if math.prod(shape) == 0:
        return True
    view_shape, view_strides = group_order(shape, c_strides(shape), block)
    return view_strides == c_strides(view_shape)


def code_block(block: Sequence[int], per: int) -> tuple[int, ...] | None:
    """The block in code bytes when `per` codes share a byte along the last axis: None when the
    block's last entry is not a multiple of `per` (then a byte holds codes of several groups)."""
    block = tuple(block)
    if not block or block[-1] % per:
        return None if per > 1 else block
    return block[:-1] + (block[-1] // per,)
