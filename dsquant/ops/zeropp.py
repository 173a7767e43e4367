"""ZeRO++ communication ops (DeepSpeed's qgZ building blocks): argument checks and dispatch.

``swizzle_quantize`` quantizes a gradient with its groups reordered so that each destination
device's data is contiguous; ``quantized_reduction`` sums the quantized slabs received from the
local devices and requantizes the sum; the ``loco_`` variants add LoCo error feedback. The data
format is DeepSpeed's (docs/format.md); what the ops compute, exactly, is in docs/zeropp.md.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, overload

from ..core import checks, formats
from ..interop.operand import Operand
from ._args import implementation, take, take_peer

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from ..core.arrays import ArrayT, DLPackArray, ParamsT

ERROR_DTYPES = ("float32", "float16", "bfloat16")   # LoCo error buffers


def _check_error(error: Any, first: Operand, numel: int, layout: str) -> Operand:
    """A LoCo error buffer: float32/float16/bfloat16, `numel` elements, contiguous and writable."""
    err = take_peer(error, "error", first, "the input", ERROR_DTYPES)
    if err.tensor.numel != numel:
        raise ValueError(f"error must have {numel} elements ({layout}), got {err.tensor.numel} "
                         f"(shape {err.tensor.shape})")
    if err.immutable:
        raise BufferError("error is updated in place, but it is read-only or immutable")
    if not err.tensor.is_c_contiguous:
        raise BufferError(f"error is updated in place and must be C-contiguous (strides {err.tensor.strides})")
    return err


# ------------------------------------------------------------------------------ swizzle_quantize
def _swizzle(x: Any, groups: int, bits: int, symmetric: bool, pipeline: int, nodes: int, devices_per_node: int,
             error: Any, beta: float) -> Any:
    symmetric = checks.bool_arg(symmetric, "symmetric")
    bits = checks.bits(bits, formats.INT_BITS)
    pipeline = checks.positive(pipeline, "pipeline")
    nodes = checks.positive(nodes, "nodes")
    dpn = checks.positive(devices_per_node, "devices_per_node")
    src = take(x, "x")
    n = src.tensor.numel
    groups = checks.groups(groups, n)
    slices = nodes * dpn * pipeline
    if groups % slices:
        raise ValueError(f"groups={groups} must be a multiple of nodes * devices_per_node * pipeline = "
                         f"{nodes} * {dpn} * {pipeline} = {slices} (every destination gets whole groups)")
    per = formats.codes_per_byte(bits)
    if n % per:
        raise ValueError(f"{bits}-bit codes are packed {per} per byte: x must have a multiple of {per} "
                         f"elements, got {n}")
    err = None if error is None else _check_error(error, src, n, "one per element, in swizzled output order")
    return implementation("swizzle_quantize", src)(src, groups, bits, symmetric, pipeline, nodes, dpn, err, beta)


@overload
def swizzle_quantize(x: NDArray[Any], groups: int, bits: int = 4, *, symmetric: bool = True, pipeline: int = 1,
                     nodes: int = 1, devices_per_node: int = 1) -> tuple[NDArray[np.int8], NDArray[np.float32]]: ...
@overload
def swizzle_quantize(x: ArrayT, groups: int, bits: int = 4, *, symmetric: bool = True, pipeline: int = 1,
                     nodes: int = 1, devices_per_node: int = 1) -> tuple[ArrayT, ArrayT]: ...
def swizzle_quantize(x: Any, groups: int, bits: int = 4, *, symmetric: bool = True, pipeline: int = 1,
                     nodes: int = 1, devices_per_node: int = 1) -> Any:
    """Quantize `x` group-wise with the groups reordered for ZeRO++'s hierarchical all-to-all.

    `x` (flattened in C order) is ``groups`` groups, viewed as ``[nodes][devices_per_node][pipeline]
    [C]`` with ``C = groups / (nodes * devices_per_node * pipeline)``: partition ``n * dpn + d`` is
    what destination node `n`, local device `d` must receive. The codes and params are written in
    the order ``[pipeline][devices_per_node][nodes][C]``, so the data for local device `d` (from
    every node) is one contiguous slab. Each group is quantized exactly as :func:`quantize` would.

    Args:
        x: float16, bfloat16, float32 or float64 array; any shape.
        groups: number of groups; must divide ``x.size`` and be a multiple of
            ``nodes * devices_per_node * pipeline``. Any group size.
        bits: 2..8 (DeepSpeed: 4 or 8); codes packed ``8 // bits`` per byte when that is whole.
        symmetric: symmetric codes (as DeepSpeed's ``swizzle_quant``) or asymmetric ones.
        pipeline: pipeline stages, as in DeepSpeed's ``swizzle_quant``.
        nodes: destination nodes.
        devices_per_node: destination devices on each node.

    Returns:
        ``(q, params)``: `q` int8, 1-D, ``x.size * bits / 8`` bytes; `params` float32
        ``[groups, 1]`` or ``[groups, 2]`` in output group order. Same framework and device as `x`.

    Examples:
        Eight one-element groups for 2 nodes x 4 devices come out as ``0 4 1 5 2 6 3 7`` (a
        one-element asymmetric group is stored exactly, as its offset):

        >>> import numpy as np, dsquant
        >>> x = np.arange(8, dtype=np.float32)
        >>> q, params = dsquant.swizzle_quantize(x, 8, bits=8, symmetric=False, nodes=2, devices_per_node=4)
        >>> dsquant.dequantize(q, params, bits=8).tolist()
        [0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0]
    """
    return _swizzle(x, groups, bits, symmetric, pipeline, nodes, devices_per_node, None, 0.0)


@overload
def loco_swizzle_quantize(x: NDArray[Any], error: DLPackArray, beta: float, groups: int, bits: int = 4, *,
                          symmetric: bool = True, pipeline: int = 1, nodes: int = 1,
                          devices_per_node: int = 1) -> tuple[NDArray[np.int8], NDArray[np.float32]]: ...
@overload
def loco_swizzle_quantize(x: ArrayT, error: DLPackArray, beta: float, groups: int, bits: int = 4, *,
                          symmetric: bool = True, pipeline: int = 1, nodes: int = 1,
                          devices_per_node: int = 1) -> tuple[ArrayT, ArrayT]: ...
def loco_swizzle_quantize(x: Any, error: DLPackArray, beta: float, groups: int, bits: int = 4, *,
                          symmetric: bool = True, pipeline: int = 1, nodes: int = 1,
                          devices_per_node: int = 1) -> Any:
    """:func:`swizzle_quantize` with LoCo error feedback (``error`` is updated in place).

    The value quantized is ``v = x + error`` (in `x`'s compute type), in output order: ``error[i]``
    belongs to output value `i`, i.e. to swizzled position ``i``, not to ``x.flat[i]``. After
    coding, ``error[i] = beta * error[i] + (1 - beta) * (v - dequantized(v))``.

    Args:
        error: float32 (recommended), float16 or bfloat16, ``x.size`` elements, C-contiguous and
            writable, same framework and device as `x`; start with zeros.
        beta: the decay of the error's moving average, in [0, 1].
        groups: as :func:`swizzle_quantize` (so are `bits`, `symmetric`, `pipeline`, `nodes` and
            `devices_per_node`).

    Returns:
        ``(q, params)`` as :func:`swizzle_quantize`.
    """
    beta = checks.unit_float(beta, "beta (the error feedback's decay)")
    return _swizzle(x, groups, bits, symmetric, pipeline, nodes, devices_per_node, error, beta)


# ------------------------------------------------------------------------------ quantized_reduction
def _reduction(q: Any, params: Any, in_groups: int, out_groups: int, bits: int, symmetric: bool,
               devices_per_node: int, half_accumulate: bool, error: Any, beta: float) -> Any:
    symmetric = checks.bool_arg(symmetric, "symmetric")
    half_accumulate = checks.bool_arg(half_accumulate, "half_accumulate")
    bits = checks.bits(bits, formats.INT_BITS)
    dpn = checks.positive(devices_per_node, "devices_per_node")
    in_groups = checks.positive(in_groups, "in_groups")
    out_groups = checks.positive(out_groups, "out_groups")
    codes = take(q, "q", formats.CODE_DTYPES)
    prm = take_peer(params, "params", codes, "q", (formats.PARAMS_DTYPE,))
    per = formats.codes_per_byte(bits)
    nbytes = codes.tensor.numel
    if nbytes % dpn:
        raise ValueError(f"q holds devices_per_node = {dpn} equal slabs of bytes, but its {nbytes} bytes "
                         f"are not a multiple of {dpn}")
    shape = codes.tensor.shape
    if not shape or shape[-1] % dpn:
        raise ValueError(f"the result has q's shape with the last dimension divided by devices_per_node = {dpn}, "
                         f"but q has shape {shape}; reshape q to 1-D")
    if in_groups % dpn:
        raise ValueError(f"in_groups={in_groups} must be a multiple of devices_per_node = {dpn} "
                         f"(each slab has in_groups / devices_per_node groups)")
    n = nbytes // dpn * per                     # values per slab = values of the result
    if n % (in_groups // dpn):
        raise ValueError(f"in_groups / devices_per_node = {in_groups // dpn} groups per slab do not divide the "
                         f"{n} values of a slab")
    checks.groups(out_groups, n, name="out_groups")
    expected = formats.params_shape(in_groups, symmetric)
    if prm.tensor.shape != expected:
        scheme = "symmetric" if symmetric else "asymmetric"
        raise ValueError(f"{scheme} params must have shape [in_groups, {expected[1]}] = {expected}, "
                         f"got {prm.tensor.shape}")
    err = None if error is None else _check_error(error, codes, n, "one per value of the result")
    q_shape = shape[:-1] + (shape[-1] // dpn,)
    return implementation("quantized_reduction", codes)(codes, prm, in_groups, out_groups, bits, symmetric, dpn,
                                                        half_accumulate, q_shape, err, beta)


def quantized_reduction(q: ArrayT, params: ParamsT, in_groups: int, out_groups: int, bits: int = 4, *,
                        symmetric: bool = True, devices_per_node: int,
                        half_accumulate: bool = False) -> tuple[ArrayT, ParamsT]:
    """Sum ``devices_per_node`` quantized slabs and requantize the sum into ``out_groups`` groups.

    `q` is ``devices_per_node`` equal byte slabs (one per source device), each holding
    ``n = q.nbytes / devices_per_node * 8 / bits`` values in ``in_groups / devices_per_node``
    groups; the params of slab `d`, group `h` are row ``d * in_groups / devices_per_node + h``.
    Value `i` of the result is the float32 sum over the slabs, in slab order, of their dequantized
    value `i` (a SUM, as DeepSpeed's), quantized in ``out_groups`` groups exactly as
    :func:`quantize` would.

    Args:
        q: int8 (or uint8) codes.
        params: float32 ``[in_groups, 1]`` (symmetric) or ``[in_groups, 2]`` (asymmetric), same
            framework and device as `q`.
        in_groups: group count of the input (all slabs together).
        out_groups: group count of the result.
        bits: 2..8 (DeepSpeed: 4 or 8), the same for input and result.
        devices_per_node: the number of slabs.
        half_accumulate: round each dequantized term and each partial sum to float16, as
            DeepSpeed does (for identical numbers); default float32.

    Returns:
        ``(q, params)``: int8 codes of `q`'s shape with the last dimension divided by
        ``devices_per_node``, float32 params ``[out_groups, 1|2]``.

    Examples:
        Two slabs of two one-element asymmetric groups (stored exactly, as their offsets):

        >>> import numpy as np, dsquant
        >>> q, p = dsquant.quantize(np.array([1.0, 2.0, 3.0, 4.0], np.float32), 4, bits=8, symmetric=False)
        >>> r, rp = dsquant.quantized_reduction(q, p, 4, 2, bits=8, symmetric=False, devices_per_node=2)
        >>> dsquant.dequantize(r, rp, bits=8).tolist()     # [1 + 3, 2 + 4]
        [4.0, 6.0]
    """
    result: tuple[ArrayT, ParamsT] = _reduction(q, params, in_groups, out_groups, bits, symmetric,
                                                devices_per_node, half_accumulate, None, 0.0)
    return result


def loco_quantized_reduction(q: ArrayT, params: ParamsT, error: DLPackArray, beta: float, in_groups: int,
                             out_groups: int, bits: int = 4, *, symmetric: bool = True, devices_per_node: int,
                             half_accumulate: bool = False) -> tuple[ArrayT, ParamsT]:
    """:func:`quantized_reduction` with LoCo error feedback (``error`` is updated in place).

    The value quantized is ``v = sum + error`` (float32); ``error[i]`` belongs to value `i` of the
    result. After coding, ``error[i] = beta * error[i] + (1 - beta) * (v - dequantized(v))``.

    Args:
        error: float32 (recommended), float16 or bfloat16, one element per value of the result
            (``q.nbytes / devices_per_node * 8 / bits``), C-contiguous, writable; start with zeros.
        beta: the decay of the error's moving average, in [0, 1].
        in_groups: as :func:`quantized_reduction` (so are the other arguments).
    """
    beta = checks.unit_float(beta, "beta (the error feedback's decay)")
    result: tuple[ArrayT, ParamsT] = _reduction(q, params, in_groups, out_groups, bits, symmetric,
                                                devices_per_node, half_accumulate, error, beta)
    return result


__all__ = ["loco_quantized_reduction", "loco_swizzle_quantize", "quantized_reduction", "swizzle_quantize"]
