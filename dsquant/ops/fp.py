"""Minifloat quantization: ``fp_quantize`` / ``fp_dequantize`` / ``fake_fp_quantize`` to FP8 (E4M3,
E5M2), FP6 (E3M2, E2M3) and FP4 (E2M1) codes with per-group scales (absmax as float32, OCP MX's
E8M0 shared exponents, NVIDIA's NVFP4). The formats, scalings and byte layouts are in docs/fp.md."""
from __future__ import annotations

import math
from typing import Any

from ..core import checks, fp_formats, registry, rng
from ..interop import operand
from ..interop.adapters import graph_device
from ._args import implementation, take, take_out, take_peer, take_values_out

_CODE_DTYPES = ("uint8", "int8")


def _scaling(scaling: str, fmt: fp_formats.FpFormat) -> int:
    if not isinstance(scaling, str) or scaling not in fp_formats.SCALINGS:
        raise ValueError(f"scaling must be one of {', '.join(fp_formats.SCALINGS)}, got {scaling!r}")
    if scaling == "nvfp4" and fmt.name != "e2m1":
        raise ValueError(f"scaling='nvfp4' is defined for fmt='e2m1' (NVFP4's elements), got fmt={fmt.name!r}")
    return fp_formats.SCALINGS.index(scaling)


def _mx_rounding(mx_rounding: str) -> int:
    if not isinstance(mx_rounding, str) or mx_rounding not in fp_formats.MX_ROUNDINGS:
        raise ValueError(f"mx_rounding must be one of {', '.join(fp_formats.MX_ROUNDINGS)}, got {mx_rounding!r}")
    return fp_formats.MX_ROUNDINGS.index(mx_rounding)


def _groups(group_size: int, numel: int) -> int:
    group_size = checks.positive(group_size, "group_size")
    if numel == 0:
        return 1                                   # an empty input is one (empty) group
    if numel % group_size:
        raise ValueError(f"group_size={group_size} does not divide the {numel} elements of x "
                         f"(a group is group_size contiguous elements in C order)")
    return numel // group_size


def _common(x: Any, group_size: int, fmt: str, scaling: str, stochastic: bool, seed: int | None, saturate: bool,
            mx_rounding: str) -> tuple[fp_formats.FpFormat, int, int, bool, bool, operand.Operand, int, int, int]:
    f = fp_formats.parse(fmt)
    scaling_code = _scaling(scaling, f)
    rounding = _mx_rounding(mx_rounding)
    stochastic = checks.bool_arg(stochastic, "stochastic")
    saturate = checks.bool_arg(saturate, "saturate")
    src = take(x, "x")
    groups = _groups(group_size, src.tensor.numel)
    seed, offset = rng.resolve(seed, src.tensor.numel, stochastic)
    return f, scaling_code, rounding, stochastic, saturate, src, groups, seed, offset


def fp_quantize(x: Any, group_size: int, fmt: str = "e4m3", *, scaling: str = "absmax", stochastic: bool = False,
                seed: int | None = None, saturate: bool = True, mx_rounding: str = "floor",
                as_float8: bool = False) -> tuple[Any, Any]:
    """Minifloat codes of `x` with one scale per group of `group_size` contiguous elements.

    Each group's values are multiplied by a scale factor and rounded to the element format
    (`fmt`), exactly as ml_dtypes converts the scaled values (round to nearest even, subnormals,
    signed zero). Statistics ignore NaN and ±Inf. Details: docs/fp.md.

    Args:
        x: float16, bfloat16, float32 or float64 array (NumPy, CuPy, torch, JAX, any DLPack producer).
        group_size: elements per group; must divide ``x.size``. Any size.
        fmt: ``"e4m3"`` (OCP E4M3FN, max 448), ``"e5m2"`` (max 57344), ``"e3m2"``, ``"e2m3"`` (FP6),
            ``"e2m1"`` (FP4).
        scaling: ``"absmax"``: scaled value ``f32(x * f32(max / absmax))``, scale ``f32(absmax / max)``
            (float32); ``"mx"``: OCP MX v1.0 shared power-of-two exponent per group (uint8 E8M0; the
            standard's block is 32); ``"nvfp4"``: NVIDIA's NVFP4 (``fmt="e2m1"``; E4M3 block scale per
            group, the standard's block is 16, and a float32 tensor scale).
        stochastic: round stochastically (unbiased over the dropped mantissa bits) instead of to
            nearest even, with Philox keyed by (seed, offset) and the element index as counter.
        seed: seed of stochastic rounding; None draws from the global stream (:func:`manual_seed`).
        saturate: overflow (and ±Inf) becomes ±max; False: the format's rules (E5M2 ±Inf, E4M3 NaN,
            FP6/FP4 ±max since they have neither).
        mx_rounding: ``"floor"`` (OCP MX: ``floor(log2(amax)) - emax``) or ``"rceil"``
            (``ceil(log2(amax / max))``, torchao's RCEIL) for ``scaling="mx"``.
        as_float8: FP8 formats only: return the codes as the framework's float8 array
            (``ml_dtypes.float8_e4m3fn`` / ``float8_e5m2`` for NumPy, ``torch.float8_e4m3fn`` /
            ``torch.float8_e5m2``, JAX's float8 types), zero-copy; CuPy has no float8 type.

    Returns:
        ``(codes, scales)`` in `x`'s framework and device: `codes` uint8 of `x`'s shape with the last
        dimension times ``bits/8`` (FP6: 4 codes in 3 bytes, FP4: 2 codes per byte, least significant
        bits first); `scales` float32 ``[groups]`` (absmax), uint8 ``[groups]`` (mx, E8M0 codes), or
        ``(uint8 [groups] E4M3 codes, float32 [1])`` (nvfp4).

    Examples:
        >>> import numpy as np, dsquant
        >>> codes, scales = dsquant.fp_quantize(np.array([448.0, -1.0, 0.5, 0.0], np.float32), 4, "e4m3")
        >>> [hex(c) for c in codes.tolist()], scales
        (['0x7e', '0xb8', '0x30', '0x0'], array([1.], dtype=float32))
        >>> dsquant.fp_dequantize(codes, scales, "e4m3")
        array([448. ,  -1. ,   0.5,   0. ], dtype=float32)
    """
    f, scaling_code, rounding, stochastic, saturate, src, groups, seed, offset = _common(
        x, group_size, fmt, scaling, stochastic, seed, saturate, mx_rounding)
    as_float8 = checks.bool_arg(as_float8, "as_float8")
    if as_float8 and f.bits != 8:
        raise ValueError(f"as_float8=True needs an FP8 format (e4m3, e5m2), got fmt={f.name!r}")
    code_shape = fp_formats.code_shape(src.tensor.shape, f)
    codes, scales = implementation("fp_quantize", src)(
        src, f.code, scaling_code, rounding, groups, code_shape, stochastic, saturate, seed, offset)
    if as_float8:
        codes = src.adapter.float8_view(codes, f.ml_dtypes)
    return codes, scales


def fake_fp_quantize(x: Any, group_size: int, fmt: str = "e4m3", *, scaling: str = "absmax",
                     stochastic: bool = False, seed: int | None = None, saturate: bool = True,
                     mx_rounding: str = "floor", out: Any = None) -> Any:
    """:func:`fp_quantize` then :func:`fp_dequantize` in one pass, in `x`'s dtype: the values a
    model sees when its tensors are stored in `fmt`. NaN and ±Inf elements come back unchanged.

    Arguments as :func:`fp_quantize`; `out`: an array of `x`'s dtype and shape to write into. A
    torch tensor that requires grad (with grad mode on), or any torch tensor under
    ``torch.compile``, goes through the custom op ``torch.ops.dsquant.fake_fp_quantize`` (see
    :mod:`dsquant.torch`), whose gradient is the identity (straight-through), as fake_quantize's.

    Examples:
        >>> import numpy as np, dsquant
        >>> dsquant.fake_fp_quantize(np.array([3.0, 1.1, -0.2, 0.0], np.float32), 4, "e2m1")
        array([ 3. ,  1. , -0.25,  0. ], dtype=float32)
    """
    graph = graph_device(x) if out is None else None
    if graph is not None:                          # torch autograd / torch.compile: the custom op
        checks.positive(group_size, "group_size")  # before the framework op converts it (to int64)
        return registry.lookup("fake_fp_quantize", graph)(x, group_size, fmt, scaling, stochastic, seed, saturate,
                                                          mx_rounding)
    return fake_fp_quantize_array(x, group_size, fmt, scaling, stochastic, seed, saturate, mx_rounding, out)


def fake_fp_quantize_array(x: Any, group_size: int, fmt: str, scaling: str, stochastic: bool, seed: int | None,
                           saturate: bool, mx_rounding: str, out: Any = None) -> Any:
    """:func:`fake_fp_quantize` on the array itself (never through a framework op)."""
    f, scaling_code, rounding, stochastic, saturate, src, groups, seed, offset = _common(
        x, group_size, fmt, scaling, stochastic, seed, saturate, mx_rounding)
    fp_formats.code_shape(src.tensor.shape, f)     # the same shapes as fp_quantize accepts
    dst = take_out(out, src) if out is not None else None
    return implementation("fake_fp_quantize", src)(src, dst, f.code, scaling_code, rounding, groups, stochastic,
                                                   saturate, seed, offset)


def fp_dequantize(codes: Any, scales: Any, fmt: str = "e4m3", *, scaling: str = "absmax", dtype: Any = None,
                  out: Any = None) -> Any:
    """Values of minifloat codes made by :func:`fp_quantize`: ``out(decode(code) * dq)``, with ``dq``
    the group's float32 scale (absmax), ``2**(code - 127)`` (mx), or ``f32(e4m3(code) *
    tensor_scale)`` (nvfp4), computed in float32 (float64 for a float64 result).

    Args:
        codes: uint8 (or int8) code bytes, as :func:`fp_quantize` returns them (FP8: also a
            float8 array of NumPy/ml_dtypes, torch, JAX or any DLPack producer, whose float8 type
            must be `fmt`'s).
        scales: as :func:`fp_quantize` returns them for `scaling` (same framework and device as
            `codes`); their count is the group count, which must divide the number of values.
        fmt: as given to :func:`fp_quantize`.
        scaling: as given to :func:`fp_quantize`.
        dtype: float16, bfloat16, float32 (default) or float64; with `out` and no `dtype`, `out`'s.
        out: optional array of the result's shape to write into.

    Returns:
        A new array (or `out`): `codes`' shape with the last dimension times ``8/bits``.
    """
    f = fp_formats.parse(fmt)
    scaling_code = _scaling(scaling, f)
    q = take(codes, "codes", _CODE_DTYPES + tuple(fp_formats.FLOAT8))
    element_type = fp_formats.FLOAT8.get(q.tensor.dtype_name)
    if element_type is not None and element_type is not f:
        raise TypeError(f"codes are {q.tensor.dtype_name} values, which are fmt={element_type.name!r} codes, "
                        f"but fmt={f.name!r} was given")
    tensor_scale = None
    if scaling == "nvfp4":
        if not isinstance(scales, (tuple, list)) or len(scales) != 2:
            raise TypeError("scales for scaling='nvfp4' must be the pair (block scales, tensor scale) that "
                            f"fp_quantize returns, got {type(scales).__name__}")
        scales, tensor = scales
        tensor_scale = take_peer(tensor, "scales[1]", q, "codes", ("float32",))
        if tensor_scale.tensor.numel != 1:
            raise ValueError(f"the tensor scale (scales[1]) must have one element, got {tensor_scale.tensor.numel}")
    allowed = ("float32",) if scaling == "absmax" else _CODE_DTYPES
    prm = take_peer(scales, "scales" if tensor_scale is None else "scales[0]", q, "codes", allowed)
    shape = fp_formats.value_shape(q.tensor.shape, f)
    numel = math.prod(shape)
    groups = checks.groups(prm.tensor.numel, numel, name="the number of scales (the group count)")
    inputs = ((q, "codes"), (prm, "scales")) + (((tensor_scale, "scales[1]"),) if tensor_scale is not None else ())
    dst, dtype_code = take_values_out(out, shape, dtype, inputs)
    return implementation("fp_dequantize", q)(q, prm, tensor_scale, f.code, scaling_code, groups, numel, dtype_code,
                                              shape, dst)
