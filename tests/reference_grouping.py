"""The reference of block and per-channel groupings, independent of dsquant.core.grouping: each
element's group and its rank inside the group come from its multi-index (``i // block`` and
``i % block``, both raveled in C order), not from strided views. An op over a grouping is the
op's ``groups=`` reference (reference.py, reference_int.py) applied to the elements laid out
group by group, and the results put back where their elements came from."""
import math

import numpy as np

import reference as fake_ref
import reference_int as int_ref


def block_of(shape, block_size=None, axis=None):
    """The per-axis block of torchao's block_size (an int: the last axis) or torch's axis."""
    if axis is not None:
        axis %= len(shape)
        return tuple(1 if i == axis else n for i, n in enumerate(shape))
    if isinstance(block_size, int):
        return (1,) * (len(shape) - 1) + (block_size,)
    return tuple(block_size)


def positions(shape, block):
    """For every element of an array of `shape` (C order): its position when the elements are laid
    out group by group (group g occupies g*S .. g*S + S - 1, each group's elements in the C order
    of their index inside the block)."""
    idx = np.indices(shape).reshape(len(shape), -1)
    grid = tuple(n // b for n, b in zip(shape, block))
    gid = np.ravel_multi_index(tuple(idx[i] // block[i] for i in range(len(shape))), grid)
    rank = np.ravel_multi_index(tuple(idx[i] % block[i] for i in range(len(shape))), block)
    return gid * math.prod(block) + rank


def grid_of(shape, block, axis=None):
    return (shape[axis % len(shape)],) if axis is not None else tuple(n // b for n, b in zip(shape, block))


def to_groups(x, block):
    """x's elements laid out group by group (flat)."""
    rows = np.empty(x.size, x.dtype)
    rows[positions(x.shape, block)] = np.ascontiguousarray(x).reshape(-1)
    return rows


def from_groups(rows, shape, block):
    return rows[positions(shape, block)].reshape(shape)


def fake_quantize(x, block, bits, symmetric, stochastic=False, seed=0, offset=0):
    groups = math.prod(n // b for n, b in zip(x.shape, block))
    y = fake_ref.fake_quantize(to_groups(x, block), max(groups, 1), bits, symmetric, stochastic, seed, offset)
    return from_groups(y, x.shape, block)


def quantize(x, block, bits, symmetric, axis=None):
    """(code bytes uint8 in q's shape, params float32 grid + (1|2,))."""
    groups = math.prod(n // b for n, b in zip(x.shape, block))
    codes, params = int_ref.codes_ref(to_groups(x, block), groups, bits, symmetric)
    in_place = from_groups(codes, x.shape, block).reshape(-1)
    per = int_ref.codes_per_byte(bits)
    q = int_ref.pack_ref(in_place, bits).reshape(x.shape[:-1] + (x.shape[-1] // per,))
    return q, params.reshape(grid_of(x.shape, block, axis) + (params.shape[1],))


def dequantize(q, params, shape, block, bits, dtype):
    codes = int_ref.unpack_ref(q, bits)
    rows = to_groups(codes.reshape(shape), block)
    k = params.shape[-1]
    y = int_ref.dequantize_ref(int_ref.pack_ref(rows, bits), params.reshape(-1, k), bits, dtype)
    return from_groups(y, shape, block)


def quantize_given(x, params, block, bits):
    """Code bytes (q's shape) of dsquant.quantize(x, params=params) for a grouping of `block`."""
    k = params.shape[-1]
    codes = int_ref.codes_given_ref(to_groups(x, block), params.reshape(-1, k), bits)
    per = int_ref.codes_per_byte(bits)
    return int_ref.pack_ref(from_groups(codes, x.shape, block).reshape(-1), bits).reshape(
        x.shape[:-1] + (x.shape[-1] // per,))
