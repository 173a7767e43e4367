"""DeepSpeed's FP quantizer records (:mod:`dsquant.compat.deepspeed_fp`): quantize to and dequantize
from records, whole or split.

A record per group of ``group_size`` contiguous elements: the codes as an LSB-first bit stream of
``q_bits``-bit codes, then the group's scale as a little-endian float32. Two code spaces: by
default the standard OCP formats with absmax scaling, exactly as :func:`dsquant.fp_quantize`
computes codes and scales (E4M3FN, E5M2, E3M2, E2M1; there is no OCP 12-bit format); with
``compat=True`` DeepSpeed's own (every exponent code a normal binade, no zero, no Inf/NaN, largest
magnitude q_range = 480, 114688, 510, 28, 6). The rules are in cuda/dsq_fp_ds.cuh and
docs/deepspeed_fp.md.
"""
from __future__ import annotations

import math
from typing import Any

from ..core import checks, dtypes, fp_ds, rng
from ..interop import operand
from ._args import implementation, take, take_peer

BYTE_DTYPES = ("uint8", "int8")
INDEX_DTYPES = ("int32", "int64")


def shape_and_dtype(x: Any, name: str, allowed: tuple[str, ...] | None = None) -> tuple[tuple[int, ...], str]:
    """(shape, dtype name) of an array argument, checked as the ops check it (float by default)."""
    t = take(x, name, allowed).tensor
    return t.shape, t.dtype_name


def _format(q_bits: int, mantissa: int | None) -> fp_ds.DsFpFormat:
    q_bits = checks.int_arg(q_bits, "q_bits")
    if mantissa is not None:
        mantissa = checks.int_arg(mantissa, "q_mantisa_bits")
    return fp_ds.format_of(q_bits, mantissa)


def _writable_bytes(out: Any, first: Any, nbytes: int, name: str = "out") -> Any:
    dst = take_peer(out, name, first, "val", BYTE_DTYPES)
    operand.check_writable(dst, name)
    if not dst.tensor.is_c_contiguous or dst.tensor.numel != nbytes:
        raise ValueError(f"{name} must be a C-contiguous uint8 array of {nbytes} bytes (groups x record bytes), "
                         f"got shape {dst.tensor.shape} (contiguous: {dst.tensor.is_c_contiguous})")
    return dst


def quantize_records(x: Any, group_size: int, q_bits: int = 8, mantissa: int | None = None, *,
                     compat: bool = False, stochastic: bool = False, seed: int | None = None, out: Any = None,
                     split: bool = False) -> Any:
    """Records of `x`: OCP codes (default) or DeepSpeed's (``compat=True``).

    Args:
        x: float16, bfloat16, float32 or float64 array; `group_size` must divide its size.
        group_size: elements per group; ``group_size * q_bits / 8`` must be whole. Any size.
        q_bits, mantissa: 8 with 3 (E4M3) or 2 (E5M2); 12 (E4M7, compat only), 6 (E3M2), 4 (E2M1).
        compat: DeepSpeed's code space and q_range instead of the OCP formats.
        stochastic: unbiased stochastic rounding between the two neighbouring codes.
        seed: stochastic rounding seed; None draws from the library-global stream.
        out: optional C-contiguous uint8 array of ``groups * record_bytes`` bytes to write into.
        split: return ``(codes, scales)`` instead: codes uint8 ``[groups * group_size * q_bits / 8]``
            (`x`'s shape for 8 bits), scale bytes uint8 ``[groups, 4]`` (DeepSpeed's meta tensors).

    Returns:
        uint8 ``[groups, record_bytes]`` (or `out`), or the split pair, in `x`'s framework.

    Examples:
        >>> import numpy as np
        >>> from dsquant.ops import fp_ds
        >>> x = np.array([6.0, 2.5, -1.0, 0.0], np.float32)
        >>> r = fp_ds.quantize_records(x, 4, 4, 1, compat=True)          # DeepSpeed's E2M1 (no zero)
        >>> [hex(b) for b in r[0, :2]], r[0, 2:].view(np.float32)      # 6, 2 (tie to even), -1, +min
        (['0x47', '0xa'], array([1.], dtype=float32))
        >>> fp_ds.dequantize_records(r, 4, 4, 1, compat=True)
        array([ 6. ,  2. , -1. ,  0.5], dtype=float32)
        >>> r = fp_ds.quantize_records(x, 4, 4, 1)                       # OCP E2M1 (fp_quantize's codes)
        >>> [hex(b) for b in r[0, :2]], fp_ds.dequantize_records(r, 4, 4, 1)
        (['0x47', '0xa'], array([ 6.,  2., -1.,  0.], dtype=float32))
    """
    fmt = _format(q_bits, mantissa)
    space = fp_ds.space_of(fmt, checks.bool_arg(compat, "compat"))
    stochastic = checks.bool_arg(stochastic, "stochastic_rounding")
    src = take(x, "val")
    group_size = checks.int_arg(group_size, "group_size")
    n = src.tensor.numel
    fp_ds.check_group_size(group_size, fmt.q_bits, n)
    groups = n // group_size
    seed, offset = rng.resolve(seed, n, stochastic)
    dst = None
    codes_shape = None
    if split and out is not None:
        raise ValueError("out= writes whole records; split=True returns new (codes, scales) arrays: pass one of them")
    if split:
        codes_shape = src.tensor.shape if fmt.q_bits == 8 else (fp_ds.code_bytes(n, fmt.q_bits),)
    elif out is not None:
        dst = _writable_bytes(out, src, groups * fp_ds.record_bytes(group_size, fmt.q_bits))
    return implementation("fp_ds_quantize", src)(src, dst, space, group_size, fmt.q_bits, fmt.mantissa, stochastic,
                                                  seed, offset, codes_shape)


def dequantize_records(records: Any, group_size: int, q_bits: int = 8, mantissa: int | None = None, *,
                       compat: bool = False, scales: Any = None, dtype: Any = None,
                       shape: tuple[int, ...] | None = None, out: Any = None, rows: Any = None,
                       row_elems: int | None = None) -> Any:
    """Values of records (or, with `scales`, of split codes and scale bytes).

    Args:
        records: uint8 records, ``groups * record_bytes`` bytes, C order (any shape); with
            `scales`: the codes, ``groups * group_size * q_bits / 8`` bytes.
        group_size, q_bits, mantissa, compat: as given to :func:`quantize_records`.
        scales: uint8 ``[groups, 4]`` scale bytes or float32 ``[groups, 1]`` scales.
        dtype: output dtype (float16, bfloat16, float32, float64); default `out`'s, else float32.
        shape: output shape (default: `out`'s, else one dimension).
        out: optional array to write into.
        rows, row_elems: selective dequantization: the source elements are viewed as rows of
            `row_elems` (a multiple of group_size); output row i is source row ``rows[i]``. int32
            or int64 indexes, checked in bounds (IndexError).
    """
    fmt = _format(q_bits, mantissa)
    space = fp_ds.space_of(fmt, checks.bool_arg(compat, "compat"))
    group_size = checks.int_arg(group_size, "group_size")
    codes = take(records, "val_q", BYTE_DTYPES)
    nbytes = codes.tensor.numel
    if scales is None:
        per_record = fp_ds.record_bytes(group_size, fmt.q_bits) if group_size > 0 else 0
        fp_ds.check_group_size(group_size, fmt.q_bits, group_size)
        if nbytes % per_record:
            raise ValueError(f"val_q holds {nbytes} bytes, not a whole number of {per_record}-byte records "
                             f"(group_size={group_size}, q_bits={fmt.q_bits})")
        groups = nbytes // per_record
        scale_op = None
    else:
        fp_ds.check_group_size(group_size, fmt.q_bits, group_size)
        per_group = fp_ds.code_bytes(group_size, fmt.q_bits)
        if nbytes % per_group:
            raise ValueError(f"the codes hold {nbytes} bytes, not a whole number of groups of {per_group} bytes")
        groups = nbytes // per_group
        scale_op = take_peer(scales, "scale", codes, "val_q", BYTE_DTYPES + ("float32",))
        if scale_op.tensor.numel * scale_op.tensor.itemsize != 4 * groups:
            raise ValueError(f"scale must hold {groups} float32 scales (uint8 [{groups}, 4] or float32 [{groups}, 1]), "
                             f"got shape {scale_op.tensor.shape} of {scale_op.tensor.dtype_name}")
    total = groups * group_size
    rows_op = None
    source_rows = 0
    if rows is not None:
        if row_elems is None:
            raise ValueError("selective dequantization (rows=) needs row_elems, the elements of a row")
        row_elems = checks.int_arg(row_elems, "row_elems")
        if row_elems <= 0 or row_elems % group_size or total % row_elems:
            raise ValueError(f"rows of {row_elems} elements: must be a positive multiple of group_size={group_size} "
                             f"that divides the {total} quantized elements")
        rows_op = take_peer(rows, "indexes", codes, "val_q", INDEX_DTYPES)
        if len(rows_op.tensor.shape) != 1 or rows_op.tensor.numel == 0:
            raise ValueError(f"indexes must be a non-empty 1-D array, got shape {rows_op.tensor.shape}")
        source_rows = total // row_elems
        n_out = rows_op.tensor.numel * row_elems
    else:
        row_elems = 0
        n_out = total
    shape = (n_out,) if shape is None else tuple(shape)
    if out is None and math.prod(shape) != n_out:
        raise ValueError(f"the output has {n_out} elements, but shape {shape} has {math.prod(shape)}")
    dst = None
    if out is not None:
        dst = take_peer(out, "fp_out", codes, "val_q", dtypes.NAMES)
        if dst.tensor.numel != n_out:
            raise ValueError(f"fp_out has {dst.tensor.numel} elements but the records decode to {n_out}")
        operand.check_writable(dst, "fp_out")
        shape = dst.tensor.shape
        if dtype is None:
            dtype = dst.tensor.dtype_name
    code = dtypes.parse("float32" if dtype is None else dtype).code
    if dst is not None and dst.tensor.dtype != code:
        raise TypeError(f"fp_out has dtype {dst.tensor.dtype_name} but dtype is {dtypes.NAMES[code]}")
    return implementation("fp_ds_dequantize", codes)(codes, scale_op, space, group_size, fmt.q_bits, fmt.mantissa, code,
                                                      shape, dst, rows_op, row_elems, source_rows)


def scales(arr: Any, num_groups: int, group_size: int | None = None, q_bits: int = 8) -> Any:
    """The float32 scales ``[num_groups, 1]`` of split scale bytes (uint8 ``[num_groups, 4]``) or,
    with `group_size`, of whole records: a view sharing `arr`'s memory where its framework can hold
    one (NumPy, torch, CuPy; the records' scales need a record size that is a multiple of 4 and a
    4-byte aligned address), else a copy (JAX, odd record sizes)."""
    num_groups = checks.int_arg(num_groups, "num_groups")
    op = take(arr, "out", BYTE_DTYPES + ("float32",))
    t = op.tensor
    if group_size is None:
        offset, stride = 0, 4
    else:
        fmt = _format(q_bits, None if q_bits != 8 else 3)
        fp_ds.check_group_size(group_size, fmt.q_bits, group_size)
        stride = fp_ds.record_bytes(group_size, fmt.q_bits)
        offset = stride - 4
    if num_groups < 0 or t.numel * t.itemsize != num_groups * stride:
        raise ValueError(f"out has {t.numel * t.itemsize} bytes, not {num_groups} groups of {stride} bytes")
    if not t.is_c_contiguous:
        raise ValueError("out must be C-contiguous (its bytes are read as records)")
    values = implementation("fp_ds_scales_view", op)(op, offset, num_groups, stride)
    aligned = stride % 4 == 0 and (t.data + offset) % 4 == 0
    view = op.adapter.shared_view(values) if aligned else None
    if view is not None:
        return view
    return op.adapter.cast_float32(values.copy(), "float32")
