"""Drop-in replacement for DeepSpeed's quantizer op module (what ``QuantizerBuilder().load()`` returns).

Same names, argument orders and return types as DeepSpeed's extension, running dsquant's kernels:
torch tensors in, torch tensors out (CPU or CUDA); NumPy and CuPy arrays work too. How to plug it
into DeepSpeed, and every place where results differ from DeepSpeed's (and why), is in
docs/deepspeed.md.

The ZeRO++ qgZ ops (``swizzle_quant``, ``quantized_reduction`` and their LoCo variants) are here
too, summing in float32 unless ``fp16_accumulation=True`` asks for DeepSpeed's float16 sums.

Examples:
    >>> import torch
    >>> from dsquant.compat import deepspeed as ds_ops
    >>> x = torch.tensor([[0.5, -1.0, 0.25, 2.0]], dtype=torch.float16)
    >>> q, params = ds_ops.quantize(x, 1, 8, ds_ops.Symmetric)
    >>> ds_ops.dequantize(q, params, 1, 8, ds_ops.Symmetric)
    tensor([[ 0.5000, -1.0000,  0.2500,  1.9844]], dtype=torch.float16)
"""
from __future__ import annotations

import enum
import math
import operator
import sys
from typing import Any, Protocol

from ..core import checks, dtypes
from ..core.arrays import ArrayT, DLPackArray
from ..ops import fake, integer, zeropp
from . import deepspeed_plugin

__all__ = [
    "Asymmetric", "QuantizationType", "Symmetric",
    "dequantize", "dequantize_fp32", "dequantize_int4_to_half_experimental",
    "dequantize_int8_to_half_experimental",
    "ds_quantize_asym_fp16", "ds_quantize_asym_fp32", "ds_quantize_fp16", "ds_quantize_fp32",
    "ds_sr_quantize_asym_fp16", "ds_sr_quantize_asym_fp32", "ds_sr_quantize_fp16", "ds_sr_quantize_fp32",
    "loco_quantized_reduction", "loco_swizzle_quant", "quantize", "quantized_reduction", "swizzle_quant",
]


class QuantizationType(enum.IntEnum):
    """DeepSpeed's ``QuantizationType``: symmetric codes around 0, or around the group midpoint."""
    Symmetric = 0
    Asymmetric = 1


Symmetric = QuantizationType.Symmetric
Asymmetric = QuantizationType.Asymmetric


def _is_symmetric(quant_type: int) -> bool:
    try:
        value = operator.index(quant_type)
    except TypeError:
        raise TypeError(f"quant_type must be a QuantizationType, got {type(quant_type).__name__} "
                        f"{quant_type!r}") from None
    try:
        return QuantizationType(value) is Symmetric
    except ValueError:
        raise ValueError(f"quant_type must be QuantizationType.Symmetric (0) or .Asymmetric (1), "
                         f"got {quant_type!r}") from None


def _require_dtype(vals: Any, dtype: str, op: str) -> None:
    # DeepSpeed's ds_quantizer sends float16 to the _fp16 names and every other dtype to the _fp32
    # ones: those take float32, bfloat16 and float64 (each quantized in its own dtype)
    found = getattr(vals, "dtype", None)
    try:
        name = dtypes.parse(found).name if found is not None else None
    except TypeError:   # not a float dtype dsquant knows
        name = None
    ok = name == "float16" if dtype == "float16" else name not in (None, "float16")
    if not ok:
        wanted = dtype if dtype == "float16" else "float32, bfloat16 or float64"
        raise TypeError(f"{op} quantizes {wanted} tensors in place, got dtype {found}; use the matching "
                        f"_fp16/_fp32 function, or dsquant.ds_quantizer for any float dtype")


# ------------------------------------------------------------------------------ fake quantization
class InPlaceQuantizer(Protocol):
    """The type of the ``ds_*quantize*`` functions: ``(vals, groups, bits) -> vals``."""

    def __call__(self, vals: ArrayT, groups: int, bits: int) -> ArrayT: ...


def _fake(dtype: str, stochastic: bool, asymmetric: bool, name: str) -> InPlaceQuantizer:
    def op(vals: ArrayT, groups: int, bits: int) -> ArrayT:
        _require_dtype(vals, dtype, name)
        return fake.ds_quantizer(vals, groups, bits, sr=stochastic, asym=asymmetric)
    kind = ("stochastic-rounding " if stochastic else "") + ("asymmetric" if asymmetric else "symmetric")
    op.__name__ = op.__qualname__ = name
    what = dtype if dtype == "float16" else "float32, bfloat16 or float64"
    op.__doc__ = (f"{name}(vals, groups, bits): {kind} fake quantization of a {what} tensor in place; "
                  f"returns `vals`. See :func:`dsquant.ds_quantizer`.")
    return op


ds_quantize_fp32 = _fake("float32", False, False, "ds_quantize_fp32")
ds_quantize_fp16 = _fake("float16", False, False, "ds_quantize_fp16")
ds_sr_quantize_fp32 = _fake("float32", True, False, "ds_sr_quantize_fp32")
ds_sr_quantize_fp16 = _fake("float16", True, False, "ds_sr_quantize_fp16")
ds_quantize_asym_fp32 = _fake("float32", False, True, "ds_quantize_asym_fp32")
ds_quantize_asym_fp16 = _fake("float16", False, True, "ds_quantize_asym_fp16")
ds_sr_quantize_asym_fp32 = _fake("float32", True, True, "ds_sr_quantize_asym_fp32")
ds_sr_quantize_asym_fp16 = _fake("float16", True, True, "ds_sr_quantize_asym_fp16")


# ------------------------------------------------------------------------------ integer codes
def quantize(input: ArrayT, groups: int, num_bits: int, quant_type: int) -> list[ArrayT]:
    """Integer codes and params of `input` in `groups` groups: ``[q, params]``.

    `q` is int8 (last dimension halved for 4 bits), `params` float32 ``[groups, 1]`` (symmetric)
    or ``[groups, 2]`` (asymmetric). Any float dtype and group size; see :func:`dsquant.quantize`.
    """
    q, params = integer.quantize(input, groups, num_bits, symmetric=_is_symmetric(quant_type))
    return [q, params]


def _dequantize(q: ArrayT, params: Any, groups: int, num_bits: int, quant_type: int, dtype: str) -> ArrayT:
    # DeepSpeed reads params as a flat array, 1 (symmetric) or 2 (asymmetric) floats per group, and
    # takes the group size as N / groups. Its callers pass groups = params.numel(), which is the
    # group count only for symmetric params; the group count here comes from params, and `groups`
    # may be either that count or params.numel().
    symmetric = _is_symmetric(quant_type)
    per_group = 1 if symmetric else 2
    size = math.prod(params.shape)
    count = size // per_group
    groups = checks.int_arg(groups, "groups")
    if size % per_group or groups not in (count, size):
        scheme = "symmetric" if symmetric else "asymmetric"
        raise ValueError(f"{scheme} params hold {per_group} float(s) per group; params has {size} floats, so "
                         f"groups must be {size / per_group:g} (or params.numel() = {size}), got {groups}")
    return integer.dequantize(q, params.reshape(count, per_group), num_bits, dtype=dtype)


def dequantize(q: ArrayT, params: Any, groups: int, num_bits: int, quant_type: int) -> ArrayT:
    """float16 values of DeepSpeed-format codes (see :func:`dsquant.dequantize`)."""
    return _dequantize(q, params, groups, num_bits, quant_type, "float16")


def dequantize_fp32(q: ArrayT, params: Any, groups: int, num_bits: int, quant_type: int) -> ArrayT:
    """float32 values of DeepSpeed-format codes (see :func:`dsquant.dequantize`)."""
    return _dequantize(q, params, groups, num_bits, quant_type, "float32")


def dequantize_int4_to_half_experimental(data: DLPackArray, scale: DLPackArray,
                                         min: DLPackArray,
                                         num_group: int, group_size: int) -> Any:
    """float16 ``[num_group, group_size]`` from unsigned 4-bit codes (high nibble first):
    ``f16(f16(q) / scale[g]) + min[g]`` in half precision, for any group count and size."""
    return integer.dequantize_unsigned_half(data, scale, min, num_group, group_size, 4)


def dequantize_int8_to_half_experimental(data: DLPackArray, scale: DLPackArray,
                                         min: DLPackArray,
                                         num_group: int, group_size: int) -> Any:
    """float16 ``[num_group, group_size]`` from unsigned 8-bit codes:
    ``f16(f16(q) / scale[g]) + min[g]`` in half precision, for any group count and size."""
    return integer.dequantize_unsigned_half(data, scale, min, num_group, group_size, 8)


# ------------------------------------------------------------------------------ ZeRO++ (qgZ)
def _scales(scales: Any, groups: int, quant_type: int, name: str) -> Any:
    """DeepSpeed's scales as [groups, 1|2] (it reads them as a flat float array)."""
    per_group = 1 if _is_symmetric(quant_type) else 2
    groups = checks.int_arg(groups, name)
    if math.prod(scales.shape) != groups * per_group:
        raise ValueError(f"scales must hold {per_group} float(s) per group for {groups} groups "
                         f"({groups * per_group} floats), got shape {tuple(scales.shape)}")
    return scales.reshape(groups, per_group)


def swizzle_quant(input: ArrayT, groups: int, num_bits: int, quant_type: int, pipeline_size: int, nodes: int,
                  devices_per_node: int) -> list[ArrayT]:
    """``[q, scales]``: the groups of `input` quantized in ZeRO++'s swizzled order, `q` 1-D int8.
    See :func:`dsquant.swizzle_quantize` (any float dtype, any group size)."""
    q, scales = zeropp.swizzle_quantize(input, groups, num_bits, symmetric=_is_symmetric(quant_type),
                                         pipeline=pipeline_size, nodes=nodes, devices_per_node=devices_per_node)
    return [q, scales]


def quantized_reduction(q_in: ArrayT, scales_in: ArrayT, in_groups: int, out_groups: int, num_bits: int,
                        quant_type: int, devices_per_node: int, *, fp16_accumulation: bool = False) -> list[ArrayT]:
    """``[q_out, scales_out]``: the SUM of the ``devices_per_node`` quantized slabs of `q_in`,
    requantized in `out_groups` groups (correct asymmetric params indexing). ``fp16_accumulation``
    sums in float16 as DeepSpeed does. See :func:`dsquant.quantized_reduction`."""
    q, scales = zeropp.quantized_reduction(
        q_in, _scales(scales_in, in_groups, quant_type, "in_groups"), in_groups, out_groups, num_bits,
        symmetric=_is_symmetric(quant_type), devices_per_node=devices_per_node, half_accumulate=fp16_accumulation)
    return [q, scales]


def loco_swizzle_quant(input: ArrayT, error_feedback: DLPackArray, err_beta: float, groups: int, num_bits: int,
                       quant_type: int, pipeline_size: int, nodes: int, devices_per_node: int) -> list[ArrayT]:
    """:func:`swizzle_quant` with LoCo error feedback; `error_feedback` (float16 as DeepSpeed's, or
    float32/bfloat16; ``input.numel()`` elements in swizzled order) is updated in place."""
    q, scales = zeropp.loco_swizzle_quantize(
        input, error_feedback, err_beta, groups, num_bits, symmetric=_is_symmetric(quant_type),
        pipeline=pipeline_size, nodes=nodes, devices_per_node=devices_per_node)
    return [q, scales]


def loco_quantized_reduction(q_in: ArrayT, scales_in: ArrayT, error_feedback: DLPackArray, err_beta: float,
                             in_groups: int, out_groups: int, num_bits: int, quant_type: int, devices_per_node: int,
                             *, fp16_accumulation: bool = False) -> list[ArrayT]:
    """:func:`quantized_reduction` with LoCo error feedback; `error_feedback` (one element per output
    value) is updated in place."""
    q, scales = zeropp.loco_quantized_reduction(
        q_in, _scales(scales_in, in_groups, quant_type, "in_groups"), error_feedback, err_beta, in_groups,
        out_groups, num_bits, symmetric=_is_symmetric(quant_type), devices_per_node=devices_per_node,
        half_accumulate=fp16_accumulation)
    return [q, scales]


# ------------------------------------------------------------------------------ plugging into DeepSpeed
def install(fp_compat: bool = False) -> list[str]:
    """Make the imported DeepSpeed use this module: every cached quantizer module global and the
    quantizer's own op builder (docs/deepspeed.md), and its FP quantizer use
    :mod:`dsquant.compat.deepspeed_fp` (OCP codes; ``fp_compat=True``: DeepSpeed's code space,
    docs/deepspeed_fp.md). Idempotent; call it on every rank before ``deepspeed.initialize``.
    Returns the names it set (those this DeepSpeed version has)."""
    from . import deepspeed_fp
    fp_ops = deepspeed_fp.DEEPSPEED if checks.bool_arg(fp_compat, "fp_compat") else deepspeed_fp
    return deepspeed_plugin.install(sys.modules[__name__], fp_ops)


def install_from_env() -> bool:
    """:func:`install` when ``DSQUANT_DEEPSPEED=1`` is set: now if deepspeed is imported, else as
    soon as it is (for a ``sitecustomize.py``, so that ranks started by DeepSpeed's launcher get it)."""
    return deepspeed_plugin.install_from_env(sys.modules[__name__])
