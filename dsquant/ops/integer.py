"""Integer quantization in DeepSpeed's format: ``quantize`` / ``dequantize`` (signed codes, packed
when 8 % bits == 0, float32 params per group) and DeepSpeed's experimental unsigned float16
dequantization. The byte layout is in docs/format.md."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, overload

from ..core import checks, formats, registry
from ..core.grouping import Grouping
from ..interop.adapters import graph_device
from ._args import block_of, grouping, implementation, take, take_out, take_outputs, take_peer, take_values_out
from .quantized import QuantizedTensor

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from ..core.arrays import ArrayT, DLPackArray


@overload
def quantize(x: NDArray[Any], groups: int | None = None, bits: int = 8, *,
             block_size: int | Sequence[int] | None = None, axis: int | None = None, symmetric: bool | None = None,
             params: NDArray[Any] | None = None, out: tuple[NDArray[Any], NDArray[Any]] | None = None,
             ) -> QuantizedTensor[NDArray[np.int8], NDArray[np.float32]]: ...
@overload
def quantize(x: ArrayT, groups: int | None = None, bits: int = 8, *, block_size: int | Sequence[int] | None = None,
             axis: int | None = None, symmetric: bool | None = None,
             params: DLPackArray | None = None, out: tuple[ArrayT, ArrayT] | None = None,
             ) -> QuantizedTensor[ArrayT, ArrayT]: ...
def quantize(x: Any, groups: int | None = None, bits: int = 8, *, block_size: int | Sequence[int] | None = None,
             axis: int | None = None, symmetric: bool | None = None, params: Any = None, out: Any = None) -> Any:
    """Group-wise integer quantization of `x` in DeepSpeed's format: ``(q, params)``.

    The groups are given by at most one of `groups`, `block_size` and `axis` (none: one group),
    as for :func:`fake_quantize` (docs/grouping.md). Symmetric groups are scaled by
    ``2**(bits-1) / absmax``; asymmetric groups are centred on the midpoint of their range and
    scaled by ``2**bits / (max - min)``. Codes are signed, ``-2**(bits-1) .. 2**(bits-1)-1``,
    rounded half to even; NaN becomes 0, +Inf the largest code, -Inf the smallest. Statistics
    ignore non-finite elements. The byte layout is in docs/format.md.

    Args:
        x: float16, bfloat16, float32 or float64 array (NumPy, CuPy, torch, JAX, any DLPack producer).
        groups: number of groups, DeepSpeed's: ``x.size // groups`` contiguous elements in C order;
            must divide ``x.size``. Any group size works.
        block_size: an int (elements per group along the last axis) or one entry per axis, each
            dividing its axis (torchao's ``block_size``).
        axis: one group per index along `axis` (torch's per-channel ``axis``).
        bits: 2..8. With 2, 4 and 8 bits the codes are packed 8/bits per byte, first element in the
            high bits (so 4-bit codes match DeepSpeed's nibble order); with 3, 5, 6, 7 bits each code
            takes one int8.
        symmetric: True (the default): params hold ``1/scale``; False: ``1/scale`` and the group
            midpoint. With `params`, their last dimension says (1 or 2).
        params: static (calibrated, learned) params in the layout quantize returns (float32,
            ``grid + (1|2,)`` or ``[groups, 1|2]``, same framework and device as `x`): the codes are
            ``clamp(rne((x - offset) * f32(1 / params[..., 0])))`` instead of the group's own
            statistics (docs/format.md); the result holds these params.
        out: optional ``(q, params)`` to write into: arrays of `x`'s framework and device with the
            shapes below, `q` int8 or uint8 (the same bytes), `params` float32, writable, sharing
            memory with neither `x` nor each other (not with `params=`).

    Returns:
        A :class:`QuantizedTensor` ``(q, params)`` in `x`'s framework and device, which also holds
        `bits`, `symmetric`, the grouping, `x`'s shape and dtype: `q` int8 with `x`'s shape except
        that the last dimension is multiplied by ``bits/8`` when packed (a ``ValueError`` if that
        is not whole); `params` float32 ``[groups, 1|2]`` for `groups`, ``grid + (1|2,)`` for
        `block_size` and `axis` (the grid has one entry per axis, ``shape[i] // block[i]``: e.g.
        ``[rows, cols // 128, 1]`` for ``block_size=128``; ``[shape[axis], 1]`` for `axis`).

    Examples:
        >>> import numpy as np, dsquant
        >>> q, params = dsquant.quantize(np.array([3.0, -2.0, 8.0, -8.0], dtype=np.float32), bits=4)
        >>> [hex(b) for b in q.view(np.uint8)], params
        (['0x3e', '0x78'], array([[1.]], dtype=float32))
        >>> dsquant.dequantize(q, params, bits=4)
        array([ 3., -2.,  7., -8.], dtype=float32)
        >>> r = dsquant.quantize(np.ones((4, 256), np.float16), block_size=128, bits=4)
        >>> r
        QuantizedTensor(shape=(4, 256), dtype=float16, bits=4, symmetric=True, block_size=(1, 128),
                        codes=numpy[4, 128], params=numpy[4, 2, 1])
        >>> dsquant.dequantize(r).dtype
        dtype('float16')
    """
    symmetric = None if symmetric is None else checks.bool_arg(symmetric, "symmetric")
    bits = checks.bits(bits, formats.INT_BITS)
    graph = graph_device(x, autograd=False) if out is None else None   # torch.compile: torch.ops.dsquant.quantize
    if graph is not None:
        if params is not None:
            raise NotImplementedError("quantize(x, params=...) does not run under torch.compile yet; call it "
                                      "outside the compiled function")
        g = grouping(tuple(x.shape), groups, block_size, axis)
        sym = True if symmetric is None else symmetric
        q, p = registry.lookup("quantize", graph)(x, g, bits, sym)
        return QuantizedTensor(q, p, bits, sym, g, str(x.dtype).removeprefix("torch."))   # a torch tensor
    return quantize_array(x, groups, bits, True if symmetric is None else symmetric, block_size=block_size,
                          axis=axis, params=params, symmetric_given=symmetric is not None, out=out)


def quantize_array(x: Any, groups: int | None, bits: int, symmetric: bool, *,
                   block_size: int | Sequence[int] | None = None, axis: int | None = None, params: Any = None,
                   symmetric_given: bool = True, out: Any = None) -> QuantizedTensor[Any, Any]:
    """:func:`quantize` on the array itself (never through a framework op); `bits` and
    `symmetric` already checked."""
    src = take(x, "x")
    g = grouping(src.tensor.shape, groups, block_size, axis)
    q_shape = formats.code_shape(src.tensor.shape, bits)
    if params is not None:
        if out is not None:
            raise ValueError("quantize(x, params=..., out=...) is not supported: the params are the caller's "
                             "already; leave out= out")
        prm = take_peer(params, "params", src, "x", (formats.PARAMS_DTYPE,))
        symmetric = _static_scheme(prm.tensor.shape, g, symmetric if symmetric_given else None)
        q = implementation("quantize_given", src)(src, prm, max(g.groups, 1), bits, symmetric, q_shape, block_of(g))
        return QuantizedTensor(q, params, bits, symmetric, g, src.tensor.dtype_name)
    q_dst = p_dst = None
    if out is not None:
        q_dst, p_dst = take_outputs(out, src, (q_shape, g.params_shape(symmetric)),
                                    ("out[0] (codes)", "out[1] (params)"),
                                    (formats.CODE_DTYPES, (formats.PARAMS_DTYPE,)))
    q, p = implementation("quantize", src)(src, max(g.groups, 1), bits, symmetric, q_shape,
                                           g.params_shape(symmetric), block_of(g), q_dst, p_dst)
    return QuantizedTensor(q, p, bits, symmetric, g, src.tensor.dtype_name)


def fake_quantize_given(x: Any, groups: int | None, bits: int, symmetric: bool | None, params: Any, out: Any, *,
                        block_size: int | Sequence[int] | None = None, axis: int | None = None) -> Any:
    """fake_quantize(x, params=...): the codes with the caller's params decoded into x's dtype, by
    the two backend ops in a row (the codes never reach the caller); `bits` already checked."""
    src = take(x, "x")
    g = grouping(src.tensor.shape, groups, block_size, axis)
    prm = take_peer(params, "params", src, "x", (formats.PARAMS_DTYPE,))
    symmetric = _static_scheme(prm.tensor.shape, g, symmetric)
    dst = None if out is None else take_out(out, src)
    q = implementation("quantize_given", src)(src, prm, max(g.groups, 1), bits, symmetric,
                                              formats.code_shape(src.tensor.shape, bits), block_of(g))
    codes = take(q, "q", formats.CODE_DTYPES)
    return implementation("dequantize", codes)(codes, prm, max(g.groups, 1), bits, symmetric, src.tensor.dtype,
                                               src.tensor.shape, dst, block_of(g))


def _static_scheme(shape: tuple[int, ...], g: Grouping, symmetric: bool | None) -> bool:
    """The scheme of caller-supplied params of `shape` for grouping `g` (ValueError when they do not fit)."""
    k = shape[-1] if len(shape) >= 2 else 0
    if k not in (1, 2) or shape[:-1] not in (g.grid, (g.groups,)):
        raise ValueError(f"params must have the shape quantize gives them for {g} on x of shape {g.shape}: "
                         f"{g.params_shape(True)} (symmetric) or {g.params_shape(False)} (asymmetric), got {shape}")
    if symmetric is not None and symmetric != (k == 1):
        raise ValueError(f"symmetric={symmetric} contradicts params of shape {shape} (last dimension 1: symmetric, "
                         f"2: asymmetric); leave symmetric out")
    return k == 1


def choose_params(x: ArrayT, groups: int | None = None, bits: int = 8, *,
                  block_size: int | Sequence[int] | None = None, axis: int | None = None,
                  symmetric: bool = True) -> ArrayT:
    """The params :func:`quantize` computes for `x` (same arguments): float32 ``grid + (1|2,)``
    (``[groups, 1|2]`` for `groups`), in `x`'s framework and device. Give them (or calibrated ones
    in the same layout) back as ``quantize(x, params=...)`` or ``fake_quantize(x, params=...)``.
    (It runs :func:`quantize` and keeps the params: the codes are computed too.)

    Examples:
        >>> import numpy as np, dsquant
        >>> w = np.array([[1.0, -8.0], [-2.0, 4.0]], dtype=np.float32)
        >>> dsquant.choose_params(w, axis=0, bits=4).tolist()        # absmax / 8 per row
        [[1.0], [0.5]]
    """
    params: ArrayT = quantize(x, groups, bits, block_size=block_size, axis=axis, symmetric=symmetric).params
    return params


@overload
def dequantize(q: QuantizedTensor[NDArray[Any], Any], params: None = None, bits: int | None = None, *,
               groups: int | None = None, block_size: int | Sequence[int] | None = None, axis: int | None = None,
               dtype: Any = None, out: NDArray[Any] | None = None) -> NDArray[Any]: ...
@overload
def dequantize(q: QuantizedTensor[ArrayT, Any], params: None = None, bits: int | None = None, *,
               groups: int | None = None, block_size: int | Sequence[int] | None = None, axis: int | None = None,
               dtype: Any = None, out: ArrayT | None = None) -> ArrayT: ...
@overload
def dequantize(q: NDArray[Any], params: NDArray[Any], bits: int | None = None, *, groups: int | None = None,
               block_size: int | Sequence[int] | None = None, axis: int | None = None, dtype: Any = None,
               out: NDArray[Any] | None = None) -> NDArray[Any]: ...
@overload
def dequantize(q: ArrayT, params: DLPackArray, bits: int | None = None, *, groups: int | None = None,
               block_size: int | Sequence[int] | None = None, axis: int | None = None, dtype: Any = None,
               out: ArrayT | None = None) -> ArrayT: ...
def dequantize(q: Any, params: Any = None, bits: int | None = None, *, groups: int | None = None,
               block_size: int | Sequence[int] | None = None, axis: int | None = None, dtype: Any = None,
               out: Any = None) -> Any:
    """Values of integer codes made by :func:`quantize` (or by DeepSpeed's ``quantize``).

    Given the :class:`QuantizedTensor` that :func:`quantize` returned, nothing else is needed: the
    result has the original shape and dtype (`dtype` may ask for another). An argument that
    contradicts it (other `bits`, `params`, grouping) is a ``ValueError``.

    Given codes and params, the scheme comes from ``params.shape[-1]`` (1: symmetric, ``y = q *
    params[g, 0]``; 2: asymmetric, ``y = fma(q, params[g, 0], params[g, 1])``), computed in float32
    and rounded once to `dtype`. The grouping is `groups`, `block_size` or `axis` as given to
    :func:`quantize`; without them, params ``[groups, 1|2]`` mean ``groups=params.shape[0]``
    (DeepSpeed's), and params with one more dimension than the values (``grid + (1|2,)``) mean the
    blocks ``shape[i] // grid[i]``.

    Args:
        q: a :class:`QuantizedTensor`, or int8 (or uint8, the same bytes) codes; the last
            dimension holds 8/bits packed codes per byte for 2 and 4 bits.
        params: float32, same framework and device as `q` (none with a QuantizedTensor).
        bits: 2..8, as given to :func:`quantize` (default 8; a QuantizedTensor's own).
        groups: the grouping, as given to :func:`quantize` (at most one of groups, block_size, axis).
        block_size: the grouping, as given to :func:`quantize`.
        axis: the grouping, as given to :func:`quantize`.
        dtype: float16, bfloat16, float32 or float64, by name or as a NumPy or torch dtype. Default:
            a QuantizedTensor's dtype; with `out`, `out`'s dtype; else float32.
        out: optional array (same framework and device as `q`) of the result's shape to write into.

    Returns:
        A new array (or `out`) in `q`'s framework and device: `q`'s shape with the last dimension
        multiplied by ``8/bits`` when packed.

    Examples:
        >>> import numpy as np, dsquant
        >>> q = np.array([0x3e], dtype=np.uint8)            # codes 3 and -2, high nibble first
        >>> dsquant.dequantize(q, np.array([[0.5]], dtype=np.float32), bits=4, dtype="float16")
        array([ 1.5, -1. ], dtype=float16)
    """
    if isinstance(q, QuantizedTensor):
        q, params, bits, known, dtype = _remembered(q, params, bits, groups, block_size, axis, dtype, out)
        groups, block_size, axis = known.groups, None, None
        if known.kind != "groups":
            groups, block_size, axis = None, None if known.axis is not None else known.block_size, known.axis
    bits = checks.bits(8 if bits is None else bits, formats.INT_BITS)
    graph = graph_device(q, autograd=False) if out is None else None
    if graph is not None:                            # torch.compile: torch.ops.dsquant.dequantize
        g = _dequantize_grouping(formats.value_shape(tuple(q.shape), bits), tuple(params.shape), groups,
                                 block_size, axis)
        return registry.lookup("dequantize", graph)(q, params, bits, dtype, g)
    return dequantize_array(q, params, bits, dtype, out, groups=groups, block_size=block_size, axis=axis)


def _remembered(r: QuantizedTensor[Any, Any], params: Any, bits: int | None, groups: int | None,
                block_size: int | Sequence[int] | None, axis: int | None, dtype: Any,
                out: Any) -> tuple[Any, Any, int, Grouping, Any]:
    """What dequantize takes from a QuantizedTensor; ValueError for arguments that contradict it."""
    if params is not None and params is not r.params:
        raise ValueError("dequantize(r) with a QuantizedTensor r takes its params from r; "
                         "pass dequantize(r) or dequantize(codes, params, ...), not both")
    if bits is not None and checks.int_arg(bits, "bits") != r.bits:
        raise ValueError(f"bits={bits} contradicts the QuantizedTensor, which holds {r.bits}-bit codes; "
                         f"leave bits out")
    if groups is not None or block_size is not None or axis is not None:
        given = grouping(r.shape, groups, block_size, axis)
        if (given.groups, given.block_size) != (r.grouping.groups, r.grouping.block_size):
            raise ValueError(f"{given} contradicts the QuantizedTensor, quantized with {r.grouping}; "
                             f"leave the grouping out")
    if dtype is None and out is None:
        dtype = r.dtype
    return r.codes, r.params, r.bits, r.grouping, dtype


def _dequantize_grouping(shape: tuple[int, ...], params_shape: tuple[int, ...], groups: int | None,
                         block_size: int | Sequence[int] | None, axis: int | None) -> Grouping:
    """The grouping of dequantize's values of `shape` from its arguments and the params' shape,
    checked against each other."""
    if len(params_shape) < 2 or params_shape[-1] not in (1, 2):
        raise ValueError(f"params must have shape [groups, 1] (symmetric) or [groups, 2] (asymmetric), or a grid "
                         f"of groups with one entry per axis of the values + (1,) or (2,), got {params_shape}")
    lead = params_shape[:-1]
    if groups is None and block_size is None and axis is None:
        if len(lead) == 1:
            return grouping(shape, lead[0], None, None)
        if len(lead) != len(shape) or any(m <= 0 or n % m for n, m in zip(shape, lead)):
            raise ValueError(f"params of shape {params_shape} do not fit values of shape {shape}: params are "
                             f"[groups, 1|2], or grid + (1|2,) with one grid entry dividing each axis")
        return grouping(shape, None, tuple(n // m for n, m in zip(shape, lead)), None)
    g = grouping(shape, groups, block_size, axis)
    if lead not in (g.grid, (g.groups,)):
        raise ValueError(f"params of shape {params_shape} do not fit {g} on values of shape {shape}: "
                         f"expected {g.params_shape(params_shape[-1] == 1)}")
    return g


def dequantize_array(q: Any, params: Any, bits: int, dtype: Any = None, out: Any = None, *,
                     groups: int | None = None, block_size: int | Sequence[int] | None = None,
                     axis: int | None = None) -> Any:
    """:func:`dequantize` on the arrays themselves (never through a framework op); `bits` already checked."""
    codes = take(q, "q", formats.CODE_DTYPES)
    prm = take_peer(params, "params", codes, "q", (formats.PARAMS_DTYPE,))
    shape = formats.value_shape(codes.tensor.shape, bits)
    g = _dequantize_grouping(shape, prm.tensor.shape, groups, block_size, axis)
    dst, dtype = take_values_out(out, shape, dtype, ((codes, "q"), (prm, "params")))
    symmetric = prm.tensor.shape[-1] == 1
    return implementation("dequantize", codes)(codes, prm, max(g.groups, 1), bits, symmetric, dtype, shape, dst,
                                               block_of(g))


def dequantize_unsigned_half(data: DLPackArray, scale: DLPackArray, minimum: DLPackArray, num_group: int,
                             group_size: int, bits: int) -> Any:
    """DeepSpeed's experimental inference dequantization (``dequantize_int4_to_half_experimental``,
    ``dequantize_int8_to_half_experimental``): unsigned codes, float16 ``scale`` and ``minimum`` per
    group, ``y = f16(f16(q) / scale[g]) + minimum[g]`` in float16 arithmetic (correctly rounded).

    Args:
        data: uint8 (or int8) bytes: ``num_group * group_size * bits / 8`` of them; 4-bit codes hold
            the first element of each byte in the high nibble.
        scale, minimum: float16, ``num_group`` elements each, same framework and device as `data`.
        num_group, group_size: positive integers; group g is elements ``g*group_size ..`` of the output.
        bits: 4 or 8.

    Returns:
        float16 ``[num_group, group_size]`` in `data`'s framework and device.

    Examples:
        >>> import numpy as np
        >>> from dsquant.ops.integer import dequantize_unsigned_half
        >>> half = lambda *v: np.array(v, dtype=np.float16)
        >>> dequantize_unsigned_half(np.array([0x3f], np.uint8), half(2.0), half(-1.0), 1, 2, 4)
        array([[0.5, 6.5]], dtype=float16)
    """
    bits = checks.int_arg(bits, "bits")
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    num_group = checks.int_arg(num_group, "num_group")
    group_size = checks.int_arg(group_size, "group_size")
    if num_group <= 0 or group_size <= 0:
        raise ValueError(f"num_group and group_size must be positive, got {num_group} and {group_size}")
    per = formats.codes_per_byte(bits)
    codes = take(data, "data", formats.CODE_DTYPES)
    if (num_group * group_size) % per or codes.tensor.numel != num_group * group_size // per:
        raise ValueError(f"data must hold num_group * group_size = {num_group * group_size} {bits}-bit codes, "
                         f"{per} per byte, but it has {codes.tensor.numel} bytes")
    scale_op = take_peer(scale, "scale", codes, "data", ("float16",))
    min_op = take_peer(minimum, "min", codes, "data", ("float16",))
    for name, op in (("scale", scale_op), ("min", min_op)):
        if op.tensor.numel != num_group:
            raise ValueError(f"{name} must have num_group = {num_group} elements, got {op.tensor.numel}")
    return implementation("dequantize_unsigned_half", codes)(codes, scale_op, min_op, num_group, group_size, bits)
