"""Integer quantization in DeepSpeed's format: ``quantize`` / ``dequantize`` (signed codes, packed
when 8 % bits == 0, float32 params per group) and DeepSpeed's experimental unsigned float16
dequantization. The byte layout is in docs/format.md."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, overload

from ..core import checks, dtypes, formats, registry
from ..interop import operand
from ..interop.adapters import graph_device
from ._args import implementation, take, take_outputs, take_peer

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from ..core.arrays import ArrayT, DLPackArray


@overload
def quantize(x: NDArray[Any], groups: int = 1, bits: int = 8, *, symmetric: bool = True,
             out: tuple[NDArray[Any], NDArray[Any]] | None = None) -> tuple[NDArray[np.int8], NDArray[np.float32]]: ...
@overload
def quantize(x: ArrayT, groups: int = 1, bits: int = 8, *, symmetric: bool = True,
             out: tuple[ArrayT, ArrayT] | None = None) -> tuple[ArrayT, ArrayT]: ...
def quantize(x: Any, groups: int = 1, bits: int = 8, *, symmetric: bool = True, out: Any = None) -> Any:
    """Group-wise integer quantization of `x` in DeepSpeed's format: ``(q, params)``.

    A group is ``x.size // groups`` contiguous elements of `x` in C order. Symmetric groups are
    scaled by ``2**(bits-1) / absmax``; asymmetric groups are centred on the midpoint of their range
    and scaled by ``2**bits / (max - min)``. Codes are signed, ``-2**(bits-1) .. 2**(bits-1)-1``,
    rounded half to even; NaN becomes 0, +Inf the largest code, -Inf the smallest. Statistics ignore
    non-finite elements. The byte layout is in docs/format.md.

    Args:
        x: float16, bfloat16, float32 or float64 array (NumPy, CuPy, torch, JAX, any DLPack producer).
        groups: number of groups; must divide ``x.size``. Any group size works.
        bits: 2..8. With 2, 4 and 8 bits the codes are packed 8/bits per byte, first element in the
            high bits (so 4-bit codes match DeepSpeed's nibble order); with 3, 5, 6, 7 bits each code
            takes one int8.
        symmetric: True: params ``[groups, 1]`` holding ``1/scale``; False: params ``[groups, 2]``
            holding ``1/scale`` and the group midpoint.
        out: optional ``(q, params)`` to write into: arrays of `x`'s framework and device with the
            shapes below, `q` int8 or uint8 (the same bytes), `params` float32, writable, sharing
            memory with neither `x` nor each other.

    Returns:
        ``(q, params)`` in `x`'s framework and device (`out` itself when given): `q` int8 with `x`'s
        shape except that the last dimension is multiplied by ``bits/8`` when packed (a
        ``ValueError`` if that is not whole); `params` float32 ``[groups, 1]`` or ``[groups, 2]``.

    Examples:
        >>> import numpy as np, dsquant
        >>> q, params = dsquant.quantize(np.array([3.0, -2.0, 8.0, -8.0], dtype=np.float32), bits=4)
        >>> [hex(b) for b in q.view(np.uint8)], params
        (['0x3e', '0x78'], array([[1.]], dtype=float32))
        >>> dsquant.dequantize(q, params, bits=4)
        array([ 3., -2.,  7., -8.], dtype=float32)
    """
    symmetric = checks.bool_arg(symmetric, "symmetric")
    bits = checks.bits(bits, formats.INT_BITS)
    graph = graph_device(x, autograd=False) if out is None else None   # torch.compile: torch.ops.dsquant.quantize
    if graph is not None:
        checks.positive(groups, "groups")            # before the framework op converts it (to int64)
        return registry.lookup("quantize", graph)(x, groups, bits, symmetric)
    return quantize_array(x, groups, bits, symmetric, out)


def quantize_array(x: Any, groups: int, bits: int, symmetric: bool, out: Any = None) -> tuple[Any, Any]:
    """:func:`quantize` on the array itself (never through a framework op); `bits` and
    `symmetric` already checked."""
    src = take(x, "x")
    groups = checks.groups(groups, src.tensor.numel)
    q_shape = formats.code_shape(src.tensor.shape, bits)
    q_dst = p_dst = None
    if out is not None:
        q_dst, p_dst = take_outputs(out, src, (q_shape, formats.params_shape(groups, symmetric)),
                                    ("out[0] (codes)", "out[1] (params)"),
                                    (formats.CODE_DTYPES, (formats.PARAMS_DTYPE,)))
    result: tuple[Any, Any] = implementation("quantize", src)(src, groups, bits, symmetric, q_shape, q_dst, p_dst)
    return result


@overload
def dequantize(q: NDArray[Any], params: NDArray[Any], bits: int = 8, *, dtype: Any = None,
               out: NDArray[Any] | None = None) -> NDArray[Any]: ...
@overload
def dequantize(q: ArrayT, params: DLPackArray, bits: int = 8, *, dtype: Any = None,
               out: ArrayT | None = None) -> ArrayT: ...
def dequantize(q: Any, params: Any, bits: int = 8, *, dtype: Any = None, out: Any = None) -> Any:
    """Values of integer codes made by :func:`quantize` (or by DeepSpeed's ``quantize``).

    The group count and the scheme come from ``params.shape``: ``[groups, 1]`` is symmetric
    (``y = q * params[g, 0]``), ``[groups, 2]`` asymmetric (``y = fma(q, params[g, 0],
    params[g, 1])``), computed in float32 and rounded once to `dtype`.

    Args:
        q: int8 (or uint8, the same bytes) codes; the last dimension holds 8/bits packed codes per
            byte for 2 and 4 bits.
        params: float32 ``[groups, 1]`` or ``[groups, 2]``, same framework and device as `q`;
            ``groups`` must divide the number of values.
        bits: 2..8, as given to :func:`quantize`.
        dtype: float16, bfloat16, float32 (default) or float64, by name or as a NumPy or torch dtype.
            With `out` and no `dtype`, `out`'s dtype.
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
    bits = checks.bits(bits, formats.INT_BITS)
    graph = graph_device(q, autograd=False) if out is None else None
    if graph is not None:                            # torch.compile: torch.ops.dsquant.dequantize
        return registry.lookup("dequantize", graph)(q, params, bits, dtype)
    return dequantize_array(q, params, bits, dtype, out)


def dequantize_array(q: Any, params: Any, bits: int, dtype: Any = None, out: Any = None) -> Any:
    """:func:`dequantize` on the arrays themselves (never through a framework op); `bits` already checked."""
    codes = take(q, "q", formats.CODE_DTYPES)
    prm = take_peer(params, "params", codes, "q", (formats.PARAMS_DTYPE,))
    if len(prm.tensor.shape) != 2 or prm.tensor.shape[1] not in (1, 2):
        raise ValueError(f"params must have shape [groups, 1] (symmetric) or [groups, 2] (asymmetric), "
                         f"got {prm.tensor.shape}")
    shape = formats.value_shape(codes.tensor.shape, bits)
    numel = codes.tensor.numel * formats.codes_per_byte(bits)
    groups = checks.groups(prm.tensor.shape[0], numel, name="params.shape[0] (the group count)")
    dst = None
    if out is not None:
        dst = take_peer(out, "out", codes, "q", dtypes.NAMES)
        if dtype is None:
            dtype = dst.tensor.dtype_name
        if dst.tensor.shape != shape:
            raise ValueError(f"out has shape {dst.tensor.shape} but the result has shape {shape}")
        operand.check_writable(dst)
        operand.check_disjoint(codes, dst, "q", "out")
        operand.check_disjoint(prm, dst, "params", "out")
    dtype = dtypes.parse("float32" if dtype is None else dtype).code
    if dst is not None and dst.tensor.dtype != dtype:
        raise TypeError(f"out has dtype {dst.tensor.dtype_name} but dtype is {dtypes.NAMES[dtype]}")
    symmetric = prm.tensor.shape[1] == 1
    return implementation("dequantize", codes)(codes, prm, groups, bits, symmetric, dtype, shape, dst)


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
