"""Fake quantization (quantize, then dequantize, in the input's dtype): ``fake_quantize``, DeepSpeed's
in-place ``ds_quantizer``, and the seed of the library-global stochastic-rounding stream."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core import checks, formats, registry, rng
from ..core.arrays import ArrayT, DLPackArray
from ..core.formats import FAKE_BITS
from ..interop.adapters import graph_device
from ..interop.operand import Operand, host_intake
from . import integer
from ._args import block_of, grouping, implementation, take, take_out

_BITS_LO, _BITS_HI = FAKE_BITS


def fake_quantize(x: ArrayT, groups: int | None = None, bits: int = 8, *, block_size: int | Sequence[int] | None = None,
                  axis: int | None = None, symmetric: bool | None = None, stochastic: bool = False,
                  seed: int | None = None, out: ArrayT | None = None, params: DLPackArray | None = None) -> ArrayT:
    """Group-wise fake quantization (quantize, then dequantize) of `x` into a new array.

    The groups are given by at most one of `groups`, `block_size` and `axis` (none: one group;
    docs/grouping.md compares them with DeepSpeed's, bitsandbytes', torchao's and torch's). Each
    group is scaled by its own statistics (absmax for symmetric, min/max for asymmetric), rounded
    to one of ``2**bits`` levels and mapped back to `x`'s dtype. Non-finite elements come back
    unchanged and do not influence their group. The exact formulas are in docs/numerics.md.

    Args:
        x: float16, bfloat16, float32 or float64 array (NumPy, CuPy, torch, JAX, any DLPack producer).
        groups: number of groups, DeepSpeed's: a group is ``x.size // groups`` contiguous elements of
            `x` in C order; must divide ``x.size``.
        block_size: torchao's: an int (elements per group along the last axis) or one entry per
            axis (``(1, 128)``: 128 along the last axis of a 2-d array; ``(128, 128)``: tiles);
            each entry must divide its axis.
        axis: torch's per-channel ``axis``: one group per index along `axis`, spanning the others.
        bits: 2..16.
        symmetric: True: codes ``-2**(bits-1) .. 2**(bits-1)-1`` around zero; False: ``2**bits`` levels
            between the group's min and max.
        stochastic: unbiased stochastic rounding instead of round-to-nearest.
        seed: stochastic rounding seed (an int in ``[0, 2**64)``); None draws from the library-global
            stream (see :func:`manual_seed`).
        out: optional array of the same framework, device, dtype and shape to write into.
        params: static (calibrated, learned) params in :func:`quantize`'s layout (see there): the
            result is then ``dequantize(quantize(x, params=params), dtype=x.dtype)`` exactly, the
            integer codes' formulas (bits 2..8, nearest rounding; NaN becomes the offset, ±Inf the
            extreme codes, as in quantize).

    Returns:
        A new array (or `out`) of the same framework, device, dtype and shape as `x`. A torch
        tensor that requires grad (with grad mode on), or any torch tensor under ``torch.compile``,
        goes through the custom op ``torch.ops.dsquant.fake_quantize`` (see :mod:`dsquant.torch`):
        the result then has a straight-through-estimator gradient.

    Examples:
        4 bits give codes -8..7 in steps of absmax/8 (the peak 1.0 is clipped to code 7):

        >>> import numpy as np, dsquant
        >>> dsquant.fake_quantize(np.array([0.1, -0.5, 0.25, 1.0], dtype=np.float16), bits=4)
        array([ 0.125, -0.5  ,  0.25 ,  0.875], dtype=float16)
    """
    if (block_size is None and axis is None and params is None and (symmetric is None or type(symmetric) is bool)
            and type(stochastic) is bool and type(bits) is int and _BITS_LO <= bits <= _BITS_HI):
        src = host_intake(x)        # the common case, in a few hundred nanoseconds (else None)
        if src is not None:         # (a torch tensor that needs torch's op graph is not one)
            dst = None if out is None else take_out(out, src)
            fast: ArrayT = _fake_quantize(src, dst, 1 if groups is None else groups, bits, symmetric is not False,
                                          stochastic, seed)
            return fast
    stochastic = checks.bool_arg(stochastic, "stochastic")
    if params is not None:
        return _fake_quantize_given(x, groups, bits, block_size, axis, symmetric, stochastic, seed, out, params)
    symmetric = True if symmetric is None else checks.bool_arg(symmetric, "symmetric")
    bits = checks.bits(bits)
    graph = graph_device(x) if out is None else None
    if graph is not None:
        g = grouping(tuple(x.shape), groups, block_size, axis)   # type: ignore[attr-defined]  # a torch tensor
        result: ArrayT = registry.lookup("fake_quantize", graph)(x, g, bits, symmetric, stochastic, seed)
        return result
    return fake_quantize_array(x, groups, bits, symmetric, stochastic, seed, out, block_size=block_size, axis=axis)


def _fake_quantize_given(x: ArrayT, groups: int | None, bits: int, block_size: int | Sequence[int] | None,
                         axis: int | None, symmetric: bool | None, stochastic: bool, seed: int | None,
                         out: ArrayT | None, params: DLPackArray) -> ArrayT:
    """fake_quantize(x, params=...): the integer codes with the caller's params, decoded in x's dtype."""
    if stochastic or seed is not None:
        raise ValueError("fake_quantize(x, params=...) rounds to nearest (the integer codes' rule); "
                         "stochastic=True and seed= are for params computed from each group")
    bits = checks.bits(bits, formats.INT_BITS, name="bits (with params=)")
    if graph_device(x) is not None:
        raise NotImplementedError("fake_quantize(x, params=...) has no autograd or torch.compile support yet; "
                                  "call it on x.detach() (outside torch.compile)")
    if symmetric is not None:
        symmetric = checks.bool_arg(symmetric, "symmetric")
    result: ArrayT = integer.fake_quantize_given(x, groups, bits, symmetric, params, out, block_size=block_size,
                                                 axis=axis)
    return result


def fake_quantize_array(x: ArrayT, groups: int | None, bits: int, symmetric: bool, stochastic: bool,
                        seed: int | None = None, out: ArrayT | None = None, *,
                        block_size: int | Sequence[int] | None = None, axis: int | None = None) -> ArrayT:
    """:func:`fake_quantize` on the array itself (never through a framework op); `bits`,
    `symmetric` and `stochastic` already checked."""
    src = take(x, "x")
    g = grouping(src.tensor.shape, groups, block_size, axis)
    seed, offset = rng.resolve(seed, src.tensor.numel, stochastic)
    dst = None if out is None else take_out(out, src)
    result: ArrayT = implementation("fake_quantize", src)(src, dst, max(g.groups, 1), bits, symmetric, stochastic,
                                                         seed, offset, block_of(g))
    return result


def _fake_quantize(src: Operand, dst: Operand | None, groups: int, bits: int, symmetric: bool, stochastic: bool,
                   seed: int | None) -> Any:
    """The per-call fast path, on an operand of host_intake (host memory: the CPU backend)."""
    groups = checks.groups(groups, src.tensor.numel)
    seed, offset = rng.resolve(seed, src.tensor.numel, stochastic)
    return registry.lookup("fake_quantize", "cpu")(src, dst, groups, bits, symmetric, stochastic, seed, offset)


def ds_quantizer(input: ArrayT, groups: int = 1, bit_num: int = 8, sr: bool = False, asym: bool = False) -> ArrayT:  # noqa: A002 - DeepSpeed's name
    """DeepSpeed's ``ds_quantizer``: fake-quantize `input` in place and return it.

    Same meaning as ``deepspeed.ops.quantizer.ds_quantizer`` with its defects fixed (see
    docs/deepspeed.md): every dtype, any group size, real asymmetric stochastic rounding. Read-only
    and immutable arrays (JAX, read-only NumPy, views with zero or negative strides) are refused:
    use :func:`fake_quantize` for those.

    Examples:
        >>> import numpy as np, dsquant
        >>> w = np.array([0.1, -0.5, 0.25, 1.0], dtype=np.float32)
        >>> dsquant.ds_quantizer(w, groups=2, bit_num=4) is w
        True
    """
    sr = checks.bool_arg(sr, "sr")
    asym = checks.bool_arg(asym, "asym")
    bits = checks.bits(bit_num, name="bit_num")
    graph = graph_device(input, in_place=True)
    if graph is not None:
        checks.positive(groups, "groups")        # before the framework op converts it (to int64)
        registry.lookup("ds_quantizer", graph)(input, groups, bits, sr, asym)
        return input
    fake_quantize_in_place(input, groups, bits, sr, asym)
    return input


def fake_quantize_in_place(input: Any, groups: int, bits: int, sr: bool, asym: bool) -> None:  # noqa: A002 - as ds_quantizer
    """:func:`ds_quantizer` on the array itself (never through a framework op); `bits`, `sr` and
    `asym` already checked."""
    op = take(input, "input")
    groups = checks.groups(groups, op.tensor.numel)
    if op.immutable:
        raise BufferError(f"ds_quantizer quantizes in place, but this {type(input).__qualname__} is "
                          f"read-only or immutable; use dsquant.fake_quantize(x, ...), which returns a new array")
    if op.tensor.has_overlap_or_reversal:
        raise BufferError(f"ds_quantizer quantizes in place, but this view has zero or negative strides "
                          f"{op.tensor.strides} (elements alias or run backwards); use dsquant.fake_quantize(x, ...)")
    seed, offset = rng.resolve(None, op.tensor.numel, sr)
    implementation("fake_quantize_inplace", op)(op, groups, bits, not asym, sr, seed, offset)


def manual_seed(seed: int) -> None:
    """Seed the library-global stochastic-rounding stream (and restart it at offset 0).

    Examples:
        >>> import numpy as np, dsquant
        >>> x = np.linspace(-1, 1, 64, dtype=np.float32)
        >>> dsquant.manual_seed(7)
        >>> a = dsquant.fake_quantize(x, bits=2, stochastic=True)
        >>> dsquant.manual_seed(7)
        >>> bool((dsquant.fake_quantize(x, bits=2, stochastic=True) == a).all())
        True
    """
    rng.GLOBAL.manual_seed(seed)
