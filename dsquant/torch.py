"""dsquant's operations as torch custom ops (``torch.ops.dsquant.*``): autograd, ``torch.compile``.

Importing this module imports torch and registers the ops with ``torch.library``. You rarely need
to import it yourself: ``import dsquant`` still imports no framework, and the first call that
needs the ops (:func:`dsquant.fake_quantize` on a torch tensor that requires grad, any torch
tensor under ``torch.compile``, :func:`dsquant.ds_quantizer` on any torch tensor) imports it.

* ``fake_quantize``: a straight-through estimator (STE; its definition, shared with dsquant.jax, is
  :mod:`dsquant.ops.ste`). By default the gradient is the identity
  (``grad_x = grad_y``), clipped elements included: the scale comes from each group's own
  statistics, so the only clipped elements are the group's extremes (the positive peak, one step
  above the top code), and zeroing their gradient would freeze the largest weights.
  ``mask_clipped=True`` zeroes the gradient of every element whose scaled value ``v`` (the value
  the code is rounded from, docs/numerics.md) lies more than half a step outside the code range:
  ``v < lo - 1/2`` or ``v > hi + 1/2`` (PyTorch's ``fake_quantize_per_tensor_affine`` convention;
  ``lo, hi`` = ``-2**(bits-1), 2**(bits-1)-1`` symmetric, ``0, 2**bits-1`` asymmetric).
  Non-finite elements, returned unchanged, pass their gradient.
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

from typing import Any

import torch
from torch import Tensor

from .core import checks, dtypes, formats, registry, rng
from .interop.adapters import TORCH_OPS
from .ops import fake, integer, ste

_MASK64 = (1 << 64) - 1


def _signed64(seed: int | None) -> int | None:
    """A seed in [0, 2**64) as a torch int (int64, two's complement)."""
    if seed is None:
        return None
    seed = rng.check_seed(seed)
    return seed - (1 << 64) if seed >= 1 << 63 else seed


# The ops are made with torch.library's decorators called as functions (not as @decorators):
# torch is not analysed by mypy here (pyproject.toml), so a decorated function would lose its types.
def _check_fake_args(x: Tensor, groups: int) -> None:
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"x has dtype {x.dtype}; dsquant quantizes {', '.join(dtypes.NAMES)}")
    checks.groups(groups, x.numel())


# ------------------------------------------------------------------------------ fake_quantize
def _fake_quantize_impl(x: Tensor, groups: int, bits: int, symmetric: bool, stochastic: bool, seed: int | None,
                        mask_clipped: bool) -> Tensor:
    result: Tensor = fake.fake_quantize_array(x, groups, bits, symmetric, stochastic,
                                              None if seed is None else seed & _MASK64)
    return result


def _fake_quantize_fake(x: Tensor, groups: int, bits: int, symmetric: bool, stochastic: bool, seed: int | None,
                        mask_clipped: bool) -> Tensor:
    _check_fake_args(x, groups)
    return x.new_empty(x.shape)          # the result is C-contiguous, whatever x's strides


def _fake_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, groups, bits, symmetric, _stochastic, _seed, mask_clipped = inputs
    ctx.groups, ctx.bits, ctx.symmetric, ctx.mask_clipped = groups, bits, symmetric, mask_clipped
    if mask_clipped:
        ctx.save_for_backward(x)


def _fake_backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None, None, None]:
    if ctx.mask_clipped:
        x, = ctx.saved_tensors
        grad = torch.where(ste.in_range(torch, x.detach(), ctx.groups, ctx.bits, ctx.symmetric), grad, 0)
    return grad, None, None, None, None, None, None


_fake_quantize_op = torch.library.custom_op("dsquant::fake_quantize", mutates_args=(),
                                            device_types=("cpu", "cuda"))(_fake_quantize_impl)
_fake_quantize_op.register_fake(_fake_quantize_fake)
_fake_quantize_op.register_autograd(_fake_backward, setup_context=_fake_setup)


def fake_quantize(x: Tensor, groups: int = 1, bits: int = 8, *, symmetric: bool = True, stochastic: bool = False,
                  seed: int | None = None, mask_clipped: bool = False) -> Tensor:
    """:func:`dsquant.fake_quantize` as the torch op ``torch.ops.dsquant.fake_quantize``, with the
    straight-through gradient described in this module (`mask_clipped`: zero gradient for
    clipped elements)."""
    bits = checks.bits(bits)
    result: Tensor = _fake_quantize_op(x, checks.int_arg(groups, "groups"), bits,
                                       checks.bool_arg(symmetric, "symmetric"),
                                       checks.bool_arg(stochastic, "stochastic"), _signed64(seed),
                                       checks.bool_arg(mask_clipped, "mask_clipped"))
    return result


# ------------------------------------------------------------------------------ ds_quantizer
def _ds_quantizer_impl(input: Tensor, groups: int, bit_num: int, sr: bool, asym: bool) -> None:  # noqa: A002
    fake.fake_quantize_in_place(input, groups, bit_num, sr, asym)


def _ds_quantizer_fake(input: Tensor, groups: int, bit_num: int, sr: bool, asym: bool) -> None:  # noqa: A002
    _check_fake_args(input, groups)


_ds_quantizer_op = torch.library.custom_op("dsquant::ds_quantizer", mutates_args=("input",),
                                           device_types=("cpu", "cuda"))(_ds_quantizer_impl)
_ds_quantizer_op.register_fake(_ds_quantizer_fake)


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
def _quantize_impl(x: Tensor, groups: int, bits: int, symmetric: bool) -> tuple[Tensor, Tensor]:
    return integer.quantize_array(x, groups, bits, symmetric)


def _quantize_fake(x: Tensor, groups: int, bits: int, symmetric: bool) -> tuple[Tensor, Tensor]:
    _check_fake_args(x, groups)
    q = x.new_empty(formats.code_shape(tuple(x.shape), bits), dtype=torch.int8)
    return q, x.new_empty(formats.params_shape(groups, symmetric), dtype=torch.float32)


_quantize_op = torch.library.custom_op("dsquant::quantize", mutates_args=(), device_types=("cpu", "cuda"))(
    _quantize_impl)
_quantize_op.register_fake(_quantize_fake)


def quantize(x: Tensor, groups: int = 1, bits: int = 8, *, symmetric: bool = True) -> tuple[Tensor, Tensor]:
    """:func:`dsquant.quantize` as the torch op ``torch.ops.dsquant.quantize`` (no gradient)."""
    result: tuple[Tensor, Tensor] = _quantize_op(x.detach(), checks.int_arg(groups, "groups"),
                                                 checks.bits(bits, formats.INT_BITS),
                                                 checks.bool_arg(symmetric, "symmetric"))
    return result


def _dequantize_impl(q: Tensor, params: Tensor, bits: int, dtype: torch.dtype) -> Tensor:
    result: Tensor = integer.dequantize_array(q, params, bits, dtype)
    return result


def _dequantize_fake(q: Tensor, params: Tensor, bits: int, dtype: torch.dtype) -> Tensor:
    return q.new_empty(formats.value_shape(tuple(q.shape), bits), dtype=dtype)


_dequantize_op = torch.library.custom_op("dsquant::dequantize", mutates_args=(), device_types=("cpu", "cuda"))(
    _dequantize_impl)
_dequantize_op.register_fake(_dequantize_fake)


def dequantize(q: Tensor, params: Tensor, bits: int = 8, *, dtype: Any = None) -> Tensor:
    """:func:`dsquant.dequantize` as the torch op ``torch.ops.dsquant.dequantize`` (no gradient)."""
    dtype = torch.float32 if dtype is None else getattr(torch, dtypes.parse(dtype).name)
    result: Tensor = _dequantize_op(q, params.detach(), checks.bits(bits, formats.INT_BITS), dtype)
    return result


# What the front end (dsquant.fake_quantize, ...) calls for torch tensors that need torch's graphs:
# its arguments, already checked where the front end checks them.
@registry.implements("fake_quantize", TORCH_OPS)
def _front_fake_quantize(x: Tensor, groups: int, bits: int, symmetric: bool, stochastic: bool,
                         seed: int | None) -> Tensor:
    return fake_quantize(x, groups, bits, symmetric=symmetric, stochastic=stochastic, seed=seed)


@registry.implements("quantize", TORCH_OPS)
def _front_quantize(x: Tensor, groups: int, bits: int, symmetric: bool) -> tuple[Tensor, Tensor]:
    return quantize(x, groups, bits, symmetric=symmetric)


@registry.implements("dequantize", TORCH_OPS)
def _front_dequantize(q: Tensor, params: Tensor, bits: int, dtype: Any) -> Tensor:
    return dequantize(q, params, bits, dtype=dtype)


registry.implements("ds_quantizer", TORCH_OPS)(ds_quantizer)
