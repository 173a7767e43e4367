"""dsquant's operations as torch custom ops (``torch.ops.dsquant.*``): autograd, ``torch.compile``.

Importing this module imports torch and registers the ops with ``torch.library``. You rarely need
to import it yourself: ``import dsquant`` still imports no framework, and the first call that
needs the ops (:func:`dsquant.fake_quantize` on a torch tensor that requires grad, any torch
tensor under ``torch.compile``, :func:`dsquant.ds_quantizer` on any torch tensor) imports it.

* ``fake_quantize``: a straight-through estimator (STE). By default the gradient is the identity
  (``grad_x = grad_y``), clipped elements included: the scale comes from each group's own
  statistics, so the only clipped elements are the group's extremes (the positive peak, one step
  above the top code), and zeroing their gradient would freeze the largest weights.
  ``mask_clipped=True`` zeroes the gradient of every element whose scaled value ``v`` (the value
  the code is rounded from, docs/numerics.md) lies more than half a step outside the code range:
  ``v < lo - 1/2`` or ``v > hi + 1/2`` (PyTorch's ``fake_quantize_per_tensor_affine`` convention;
  ``lo, hi`` = ``-2**(bits-1), 2**(bits-1)-1`` symmetric, ``0, 2**bits-1`` asymmetric).
  Non-finite elements, returned unchanged, pass their gradient.
* ``fake_fp_quantize``: the straight-through estimator with the identity gradient (non-finite
  elements, returned unchanged, pass theirs too).
* ``quantize`` / ``dequantize``: no gradient (integer codes).
* ``ds_quantizer``: mutates its input (torch bumps the tensor's version counter, so a backward
  through a graph that saved the tensor raises, as for torch's own in-place ops); a leaf tensor
  that requires grad is refused, as torch's in-place ops refuse it.

Each op has a fake (meta) implementation, so ``torch.compile(fullgraph=True)`` traces it without
graph breaks. Through the ops, ``seed`` is a torch int (int64): seeds in [2**63, 2**64) are passed
as their two's complement. Without a seed, stochastic rounding draws from dsquant's global stream
when the op runs (also in a compiled graph).

Example:
    >>> import torch, dsquant
    >>> w = torch.tensor([0.1, -0.5, 0.25, 1.0], requires_grad=True)
    >>> y = dsquant.fake_quantize(w, bits=4)
    >>> y.sum().backward()
    >>> w.grad
    tensor([1., 1., 1., 1.])
"""
from __future__ import annotations

import torch
from torch import Tensor

from .core import checks, dtypes, formats, registry, rng
from .interop.adapters import TORCH_OPS
from .ops import fake, fp, integer

_MASK64 = (1 << 64) - 1


def _signed64(seed):
    """A seed in [0, 2**64) as a torch int (int64, two's complement)."""
    if seed is None:
        return None
    seed = rng.check_seed(seed)
    return seed - (1 << 64) if seed >= 1 << 63 else seed


# ------------------------------------------------------------------------------ fake_quantize
@torch.library.custom_op("dsquant::fake_quantize", mutates_args=(), device_types=("cpu", "cuda"))
def _fake_quantize_op(x: Tensor, groups: int, bits: int, symmetric: bool, stochastic: bool, seed: int | None,
                      mask_clipped: bool) -> Tensor:
    return fake.fake_quantize_array(x, groups, bits, symmetric, stochastic, None if seed is None else seed & _MASK64)


@_fake_quantize_op.register_fake
def _(x, groups, bits, symmetric, stochastic, seed, mask_clipped):
    _check_fake_args(x, groups)
    return x.new_empty(x.shape)          # the result is C-contiguous, whatever x's strides


def _check_fake_args(x, groups):
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"x has dtype {x.dtype}; dsquant quantizes {', '.join(dtypes.NAMES)}")
    checks.groups(groups, x.numel())


def _fake_setup(ctx, inputs, output):
    x, groups, bits, symmetric, _stochastic, _seed, mask_clipped = inputs
    ctx.groups, ctx.bits, ctx.symmetric, ctx.mask_clipped = groups, bits, symmetric, mask_clipped
    if mask_clipped:
        ctx.save_for_backward(x)


def _fake_backward(ctx, grad):
    if ctx.mask_clipped:
        x, = ctx.saved_tensors
        grad = torch.where(in_range(x, ctx.groups, ctx.bits, ctx.symmetric), grad, 0)
    return grad, None, None, None, None, None, None


_fake_quantize_op.register_autograd(_fake_backward, setup_context=_fake_setup)


def in_range(x: Tensor, groups: int, bits: int, symmetric: bool) -> Tensor:
    """Boolean mask of the elements of `x` that ``mask_clipped=True`` lets the gradient through:
    the scaled value ``v`` within half a step of the code range, or a non-finite element. The
    group statistics and scale are docs/numerics.md's (float32 arithmetic, float64 for float64)."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    v = x.detach().reshape(groups, -1).to(compute)
    finite = torch.isfinite(v)
    if symmetric:
        absmax = torch.where(finite, v.abs(), 0).amax(dim=1, keepdim=True)
        scale = (2.0 ** (bits - 1) / (absmax.double() + 5e-6)).to(compute)   # = 2^b / (2 absmax + 1e-5)
        scaled, lo, hi = v * scale, -2 ** (bits - 1), 2 ** (bits - 1) - 1
    else:
        mx = torch.where(finite, v, -torch.inf).amax(dim=1, keepdim=True)
        mn = torch.where(finite, v, torch.inf).amin(dim=1, keepdim=True)
        empty = ~finite.any(dim=1, keepdim=True)           # no finite element: as an all-zero group
        mx, mn = torch.where(empty, 0, mx), torch.where(empty, 0, mn)
        step = ((mx.double() - mn.double() + 1e-5) / 2.0 ** bits).to(compute)
        scaled, lo, hi = (v - mn) * (1 / step), 0, 2 ** bits - 1
    keep = ((scaled >= lo - 0.5) & (scaled <= hi + 0.5)) | ~finite
    return keep.reshape(x.shape)


def fake_quantize(x: Tensor, groups: int = 1, bits: int = 8, *, symmetric: bool = True, stochastic: bool = False,
                  seed: int | None = None, mask_clipped: bool = False) -> Tensor:
    """:func:`dsquant.fake_quantize` as the torch op ``torch.ops.dsquant.fake_quantize``, with the
    straight-through gradient described in this module (`mask_clipped`: zero gradient for
    clipped elements)."""
    bits = checks.bits(bits)
    return _fake_quantize_op(x, checks.int_arg(groups, "groups"), bits, checks.bool_arg(symmetric, "symmetric"),
                             checks.bool_arg(stochastic, "stochastic"), _signed64(seed),
                             checks.bool_arg(mask_clipped, "mask_clipped"))


# ------------------------------------------------------------------------------ fake_fp_quantize
@torch.library.custom_op("dsquant::fake_fp_quantize", mutates_args=(), device_types=("cpu", "cuda"))
def _fake_fp_quantize_op(x: Tensor, group_size: int, fmt: str, scaling: str, stochastic: bool, seed: int | None,
                         saturate: bool, mx_rounding: str) -> Tensor:
    return fp.fake_fp_quantize_array(x, group_size, fmt, scaling, stochastic,
                                     None if seed is None else seed & _MASK64, saturate, mx_rounding)


@_fake_fp_quantize_op.register_fake
def _(x, group_size, fmt, scaling, stochastic, seed, saturate, mx_rounding):
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"x has dtype {x.dtype}; dsquant quantizes {', '.join(dtypes.NAMES)}")
    return x.new_empty(x.shape)


def _fake_fp_backward(ctx, grad):
    return grad, None, None, None, None, None, None, None


_fake_fp_quantize_op.register_autograd(_fake_fp_backward)


def fake_fp_quantize(x: Tensor, group_size: int, fmt: str = "e4m3", *, scaling: str = "absmax",
                     stochastic: bool = False, seed: int | None = None, saturate: bool = True,
                     mx_rounding: str = "floor") -> Tensor:
    """:func:`dsquant.fake_fp_quantize` as the torch op ``torch.ops.dsquant.fake_fp_quantize``, with
    the identity (straight-through) gradient."""
    return _fake_fp_quantize_op(x, checks.positive(group_size, "group_size"), fmt, scaling,
                                checks.bool_arg(stochastic, "stochastic"), _signed64(seed),
                                checks.bool_arg(saturate, "saturate"), mx_rounding)


# ------------------------------------------------------------------------------ ds_quantizer
@torch.library.custom_op("dsquant::ds_quantizer", mutates_args=("input",), device_types=("cpu", "cuda"))
def _ds_quantizer_op(input: Tensor, groups: int, bit_num: int, sr: bool, asym: bool) -> None:  # noqa: A002
    fake.fake_quantize_in_place(input, groups, bit_num, sr, asym)


@_ds_quantizer_op.register_fake
def _(input, groups, bit_num, sr, asym):  # noqa: A002
    _check_fake_args(input, groups)


def ds_quantizer(input: Tensor, groups: int = 1, bit_num: int = 8, sr: bool = False, asym: bool = False) -> Tensor:  # noqa: A002
    """:func:`dsquant.ds_quantizer` as the mutating torch op ``torch.ops.dsquant.ds_quantizer``:
    fake-quantizes `input` in place (its version counter is bumped) and returns it."""
    if input.is_leaf and input.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("ds_quantizer: a leaf Variable that requires grad is being used in an in-place "
                           "operation (quantize w.data, or call it under torch.no_grad())")
    _ds_quantizer_op(input, checks.int_arg(groups, "groups"), checks.bits(bit_num, name="bit_num"),
                     checks.bool_arg(sr, "sr"), checks.bool_arg(asym, "asym"))
    return input


# ------------------------------------------------------------------------------ quantize / dequantize
@torch.library.custom_op("dsquant::quantize", mutates_args=(), device_types=("cpu", "cuda"))
def _quantize_op(x: Tensor, groups: int, bits: int, symmetric: bool) -> tuple[Tensor, Tensor]:
    return integer.quantize_array(x, groups, bits, symmetric)


@_quantize_op.register_fake
def _(x, groups, bits, symmetric):
    _check_fake_args(x, groups)
    q = x.new_empty(formats.code_shape(tuple(x.shape), bits), dtype=torch.int8)
    return q, x.new_empty(formats.params_shape(groups, symmetric), dtype=torch.float32)


def quantize(x: Tensor, groups: int = 1, bits: int = 8, *, symmetric: bool = True) -> tuple[Tensor, Tensor]:
    """:func:`dsquant.quantize` as the torch op ``torch.ops.dsquant.quantize`` (no gradient)."""
    return _quantize_op(x.detach(), checks.int_arg(groups, "groups"), checks.bits(bits, formats.INT_BITS),
                        checks.bool_arg(symmetric, "symmetric"))


@torch.library.custom_op("dsquant::dequantize", mutates_args=(), device_types=("cpu", "cuda"))
def _dequantize_op(q: Tensor, params: Tensor, bits: int, dtype: torch.dtype) -> Tensor:
    return integer.dequantize_array(q, params, bits, dtype)


@_dequantize_op.register_fake
def _(q, params, bits, dtype):
    return q.new_empty(formats.value_shape(tuple(q.shape), bits), dtype=dtype)


def dequantize(q: Tensor, params: Tensor, bits: int = 8, *, dtype=None) -> Tensor:
    """:func:`dsquant.dequantize` as the torch op ``torch.ops.dsquant.dequantize`` (no gradient)."""
    dtype = torch.float32 if dtype is None else getattr(torch, dtypes.parse(dtype).name)
    return _dequantize_op(q, params.detach(), checks.bits(bits, formats.INT_BITS), dtype)


# What the front end (dsquant.fake_quantize, ...) calls for torch tensors that need torch's graphs:
# its arguments, already checked where the front end checks them.
@registry.implements("fake_quantize", TORCH_OPS)
def _front_fake_quantize(x, groups, bits, symmetric, stochastic, seed):
    return fake_quantize(x, groups, bits, symmetric=symmetric, stochastic=stochastic, seed=seed)


@registry.implements("quantize", TORCH_OPS)
def _front_quantize(x, groups, bits, symmetric):
    return quantize(x, groups, bits, symmetric=symmetric)


@registry.implements("dequantize", TORCH_OPS)
def _front_dequantize(q, params, bits, dtype):
    return dequantize(q, params, bits, dtype=dtype)


registry.implements("ds_quantizer", TORCH_OPS)(ds_quantizer)


@registry.implements("fake_fp_quantize", TORCH_OPS)
def _front_fake_fp_quantize(x, group_size, fmt, scaling, stochastic, seed, saturate, mx_rounding):
    return fake_fp_quantize(x, group_size, fmt, scaling=scaling, stochastic=stochastic, seed=seed, saturate=saturate,
                            mx_rounding=mx_rounding)
