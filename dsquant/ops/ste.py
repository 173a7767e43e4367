"""The straight-through estimator (STE) of ``fake_quantize``, defined once for every framework that
differentiates through it (dsquant/torch.py, dsquant/jax.py; docs/training.md).

The gradient is the identity, ``grad_x = grad_y``, unless ``mask_clipped=True``: then it is zero
for the elements whose scaled value ``v`` (the value the code is rounded from, docs/numerics.md)
lies more than half a step outside the code range, ``v < lo - 1/2`` or ``v > hi + 1/2``
(``lo, hi`` = ``-2**(bits-1), 2**(bits-1)-1`` symmetric, ``0, 2**bits-1`` asymmetric); non-finite
elements, which fake quantization returns unchanged, pass their gradient.

:func:`in_range` is written against the functions NumPy and torch share (``xp`` is the module),
so the mask is one definition whichever framework asks for it.
"""
from __future__ import annotations

from typing import Any


def in_range(xp: Any, x: Any, groups: int, bits: int, symmetric: bool) -> Any:
    """Boolean mask (shape of `x`) of the elements ``mask_clipped=True`` lets the gradient through:
    the scaled value ``v`` within half a step of the code range, or a non-finite element. The group
    statistics and scale are docs/numerics.md's (float32 arithmetic, float64 for float64 `x`).

    `xp` is ``numpy`` or ``torch`` (any module with their ``reshape, asarray, isfinite, abs, where,
    amax, amin, any`` and dtype names); `x` an array of that module, not recording gradients."""
    compute = xp.float64 if x.dtype == xp.float64 else xp.float32
    v = xp.asarray(xp.reshape(x, (groups, -1)), dtype=compute)
    finite = xp.isfinite(v)
    if symmetric:
        absmax = xp.amax(xp.where(finite, xp.abs(v), 0), axis=1, keepdims=True)
        # = f32(2^b / (2 d(absmax) + 1e-5)), the halved form of docs/numerics.md
        scale = xp.asarray(2.0 ** (bits - 1) / (xp.asarray(absmax, dtype=xp.float64) + 5e-6), dtype=compute)
        scaled, lo, hi = v * scale, -2 ** (bits - 1), 2 ** (bits - 1) - 1
    else:
        mx = xp.amax(xp.where(finite, v, -xp.inf), axis=1, keepdims=True)
        mn = xp.amin(xp.where(finite, v, xp.inf), axis=1, keepdims=True)
        empty = ~xp.any(finite, axis=1, keepdims=True)     # no finite element: as an all-zero group
        mx, mn = xp.where(empty, 0, mx), xp.where(empty, 0, mn)
        wide_mx, wide_mn = xp.asarray(mx, dtype=xp.float64), xp.asarray(mn, dtype=xp.float64)
        step = xp.asarray((wide_mx - wide_mn + 1e-5) / 2.0 ** bits, dtype=compute)
        scaled, lo, hi = (v - mn) * (1 / step), 0, 2 ** bits - 1
    keep = ((scaled >= lo - 0.5) & (scaled <= hi + 0.5)) | ~finite
    return xp.reshape(keep, tuple(x.shape))
