"""Drop-in for DeepSpeed's FP quantizer extension (what ``FPQuantizerBuilder().load()`` returns)
and an ``FP_Quantize`` with the Python signatures of ``deepspeed.ops.fp_quantizer.FP_Quantize``.

Records keep DeepSpeed's layout: per group of ``group_size`` elements, the codes as an LSB-first
bit stream of ``q_bits``-bit codes, then the group's scale as a little-endian float32. Two code
spaces: the module's functions (and :data:`OCP`) write the standard OCP formats with absmax
scaling, exactly dsquant.fp_quantize's codes and scales (E4M3FN max 448, E5M2, E3M2, E2M1; no
12-bit format); :data:`DEEPSPEED` (and ``FP_Quantize(compat=True)``) writes DeepSpeed's own code
space (q_range 480 / 114688 for 8 bits with 3 / 2 mantissa bits, 510 for 12 bits (E4M7), 28 for
6, 6 for 4; every exponent code a normal binade), so records move between dsquant and DeepSpeed's
kernels both ways. DeepSpeed's defects are fixed or refused (round to nearest even, real
stochastic rounding, any group size and float dtype, bounds-checked indexes, errors instead of
silent no-ops); every difference is listed in docs/deepspeed_fp.md.

Examples:
    >>> import numpy as np
    >>> from dsquant.compat import deepspeed_fp
    >>> x = np.array([1.0, -3.3, 360.0, 480.0], dtype=np.float32)
    >>> out = np.ones((1, 4 + 4), np.uint8)
    >>> records = deepspeed_fp.DEEPSPEED.quantize(out, x, 4, False, 8, 3)     # DeepSpeed's E4M3 (480)
    >>> [hex(b) for b in records[0, :4]], records[0, 4:].view(np.float32)
    (['0x38', '0xc5', '0x7b', '0x7f'], array([1.], dtype=float32))
    >>> y = np.empty(4, np.float32)
    >>> _ = deepspeed_fp.DEEPSPEED.dequantize(y, records, 4, 3, 4)
    >>> y
    array([  1.  ,  -3.25, 352.  , 480.  ], dtype=float32)
    >>> records = deepspeed_fp.quantize(out, x, 4, False, 8, 3)               # OCP E4M3FN (448)
    >>> [hex(b) for b in records[0, :4]], records[0, 4:].view(np.float32)    # 336 = 448/480 * 360: a tie
    (['0x37', '0xc4', '0x7a', '0x7e'], array([1.0714285], dtype=float32))
    >>> _ = deepspeed_fp.dequantize(y, records, 4, 3, 4)
    >>> y
    array([  1.0044643,  -3.2142856, 342.85712  , 480.       ], dtype=float32)
"""
from __future__ import annotations

import math
import operator
from typing import Any

from ..core import checks, fp_ds
from ..ops import fp_ds as ops

__all__ = ["CUDA_IMPL", "DEEPSPEED", "FP_Quantize", "FpQuantizerOps", "OCP", "dequantize", "get_scales", "quantize",
           "selective_dequantize"]

# DeepSpeed's FP_Quantize reads this attribute of the loaded module (True: its CUDA path). The
# same functions serve CPU and GPU arrays here.
CUDA_IMPL = True


def _bits_of(q_mantisa_bits: int, q_exponent_bits: int) -> int:
    m = checks.int_arg(q_mantisa_bits, "q_mantisa_bits")
    e = checks.int_arg(q_exponent_bits, "q_exponent_bits")
    return m + e + 1


class FpQuantizerOps:
    """The extension's four functions in one code space: the OCP formats (``compat=False``, this
    module's own functions) or DeepSpeed's (``compat=True``, :data:`DEEPSPEED`), for records that
    DeepSpeed's kernels write and read."""
    CUDA_IMPL = CUDA_IMPL

    def __init__(self, compat: bool):
        self.compat = checks.bool_arg(compat, "compat")

    def __repr__(self) -> str:
        return f"dsquant.compat.deepspeed_fp.{'DEEPSPEED' if self.compat else 'OCP'}"

    def quantize(self, out: Any, val: Any, group_size: int, stochastic_rounding: bool | int, q_bits: int,
                 q_mantisa_bits: int, *, seed: int | None = None) -> Any:
        """DeepSpeed's ``quantize(out, val, group_size, stochastic_rounding, q_bits, q_mantisa_bits)``:
        writes the records of `val` into `out` (uint8, ``groups * (group_size*q_bits/8 + 4)`` bytes,
        C-contiguous) and returns `out`.

        `val`: float16, bfloat16, float32 or float64 (DeepSpeed: float16/bfloat16, anything else
        silently ignored); `group_size` must divide its size (any size; DeepSpeed: at most 1,536).
        `stochastic_rounding`: unbiased stochastic rounding (DeepSpeed's is in effect truncation);
        `seed` for it, else the library-global stream (``dsquant.manual_seed``)."""
        # DeepSpeed's binding takes an int; a bool is one
        stochastic = bool(operator.index(stochastic_rounding))
        return ops.quantize_records(val, group_size, q_bits, q_mantisa_bits, compat=self.compat, stochastic=stochastic,
                                    seed=seed, out=out)

    def dequantize(self, val: Any, val_q: Any, group_size: int, q_mantisa_bits: int, q_exponent_bits: int) -> Any:
        """DeepSpeed's ``dequantize(val, val_q, group_size, q_mantisa_bits, q_exponent_bits)``: writes
        the values of the records `val_q` into `val` (any float dtype; its size must be the records'
        element count) and returns `val`. ``q_mantisa_bits + q_exponent_bits + 1`` is q_bits; DeepSpeed's
        wrapper passes (4, 7) for 12 bits, which is E4M7 as in DeepSpeed's kernel."""
        q_bits = _bits_of(q_mantisa_bits, q_exponent_bits)
        return ops.dequantize_records(val_q, group_size, q_bits, q_mantisa_bits, compat=self.compat, out=val)

    def selective_dequantize(self, val: Any, val_q: Any, indexes: Any, group_size: int, q_mantisa_bits: int,
                             q_exponent_bits: int) -> Any:
        """DeepSpeed's ``selective_dequantize``: the quantized tensor is viewed as rows of
        ``Rw = val.size / len(indexes)`` elements (a multiple of group_size); row i of `val` gets source
        row ``indexes[i]``. Indexes (int32 or int64) are checked in bounds (DeepSpeed reads out of
        bounds); returns `val`."""
        q_bits = _bits_of(q_mantisa_bits, q_exponent_bits)
        numel = math.prod(ops.shape_and_dtype(val, "val")[0])
        count = math.prod(ops.shape_and_dtype(indexes, "indexes", ops.INDEX_DTYPES)[0])
        if count == 0 or numel % count:
            raise ValueError(f"val has {numel} elements: not a whole number of rows for {count} indexes")
        return ops.dequantize_records(val_q, group_size, q_bits, q_mantisa_bits, compat=self.compat, out=val,
                                      rows=indexes, row_elems=numel // count)

    def get_scales(self, out: Any, num_groups: int) -> Any:
        """DeepSpeed's ``get_scales(out, num_groups)``: the float32 ``[num_groups, 1]`` scales of the
        uint8 ``[num_groups, 4]`` scale tensor of the meta-tensor path, as a view of its memory where
        the framework allows (NumPy, torch, CuPy), else a copy. (DeepSpeed reinterprets whatever it is
        given; on a whole record buffer that is code bytes. Use ``ops.fp_ds.scales(records, G,
        group_size, q_bits)`` for the scales of records.)"""
        return ops.scales(out, num_groups)


OCP = FpQuantizerOps(compat=False)
DEEPSPEED = FpQuantizerOps(compat=True)

# The module's own functions: the default mode (OCP codes).
quantize = OCP.quantize
dequantize = OCP.dequantize
selective_dequantize = OCP.selective_dequantize
get_scales = OCP.get_scales


class FP_Quantize:  # noqa: N801 - DeepSpeed's name
    """``deepspeed.ops.fp_quantizer.FP_Quantize`` on dsquant: the same methods and arguments.

    Like DeepSpeed's, the object remembers the shape and dtype of the last :meth:`quantize` (which
    :meth:`dequantize` uses when it allocates its result); unlike it, any float dtype is taken,
    ``return_meta_tensor`` works for every q_bits, and :meth:`dequantize` also accepts ``shape=``
    and ``dtype=`` so one object can serve several tensors.

    Args:
        quantization_config: any object with a ``group_size`` attribute (DeepSpeed's
            ``QuantizationConfig``), or None with ``group_size=``.
        group_size: elements per group (default 512, DeepSpeed's).
        compat: DeepSpeed's code space (records DeepSpeed's kernels read and write; 12 bits is
            E4M7) instead of the OCP formats (E4M3FN, E5M2, E3M2, E2M1; no 12-bit format).
    """

    def __init__(self, quantization_config: Any = None, *, group_size: int | None = None, compat: bool = False):
        if group_size is None:
            group_size = 512 if quantization_config is None else quantization_config.group_size
        self.group_size = checks.positive(group_size, "group_size")
        self.q_config = quantization_config
        self.compat = checks.bool_arg(compat, "compat")
        self.cuda_impl = CUDA_IMPL
        self.orig_dtype: Any = None
        self.orig_shape: tuple[int, ...] | None = None
        self.num_groups: int | None = None
        self.scale: Any = None

    @staticmethod
    def _format(q_bits: int, q_mantisa_bits: int) -> fp_ds.DsFpFormat:
        # DeepSpeed's wrapper: q_mantisa_bits counts for 8 bits only; 12, 6, 4 have one format each
        q_bits = checks.int_arg(q_bits, "q_bits")
        return fp_ds.format_of(q_bits, q_mantisa_bits if q_bits == 8 else None)

    def quantize(self, input: Any, q_bits: int = 8, q_mantisa_bits: int = 3,  # noqa: A002 - DeepSpeed's name
                 stochastic_mode: bool = False, return_meta_tensor: bool = False, *,
                 seed: int | None = None) -> Any:
        """Records ``[groups, group_size*q_bits/8 + 4]`` uint8 of `input`; with
        ``return_meta_tensor`` the pair (codes: `input`'s shape for 8 bits, else flat; scale bytes
        ``[groups, 4]``), the scales kept for :meth:`get_scales`."""
        fmt = self._format(q_bits, q_mantisa_bits)
        self.orig_shape, self.orig_dtype = ops.shape_and_dtype(input, "input")
        self.num_groups = math.prod(self.orig_shape) // self.group_size
        result = ops.quantize_records(input, self.group_size, fmt.q_bits, fmt.mantissa, compat=self.compat,
                                      stochastic=checks.bool_arg(stochastic_mode, "stochastic_mode"), seed=seed,
                                      split=bool(return_meta_tensor))
        if return_meta_tensor:
            self.scale = result[1]
        return result

    def get_scales(self) -> Any:
        """float32 ``[groups, 1]`` scales of the last meta-tensor :meth:`quantize`, a view of them."""
        if self.scale is None or self.num_groups is None:
            raise RuntimeError("get_scales() needs a quantize(..., return_meta_tensor=True) first")
        return ops.scales(self.scale, self.num_groups)

    def _like_last(self, shape: tuple[int, ...] | None, dtype: Any) -> tuple[tuple[int, ...], Any]:
        """(shape, dtype) of a new result: the given ones, else those of the last quantize()."""
        if shape is None:
            if self.orig_shape is None:
                raise RuntimeError("[De-quantization Error]: you need to call quantize before dequantizing "
                                   "(or pass fp_out, or shape= and dtype=)")
            shape = self.orig_shape
        return tuple(shape), (self.orig_dtype if dtype is None else dtype)

    def dequantize(self, input_q: Any, fp_out: Any = None, q_bits: int = 8, q_mantisa_bits: int = 3,
                   scale: Any = None, *, shape: tuple[int, ...] | None = None, dtype: Any = None) -> Any:
        """Values of records (or, with `scale`, of meta-tensor codes and their ``[groups, 4]``
        scale bytes or float32 ``[groups, 1]`` scales) in `fp_out`, or in a new array of the last
        quantized tensor's shape and dtype (or `shape`, `dtype`)."""
        fmt = self._format(q_bits, q_mantisa_bits)
        out_shape, out_dtype = (None, dtype) if fp_out is not None else self._like_last(shape, dtype)
        return ops.dequantize_records(input_q, self.group_size, fmt.q_bits, fmt.mantissa, compat=self.compat,
                                      scales=scale, out=fp_out, shape=out_shape, dtype=out_dtype)

    def selective_dequantize(self, input_q: Any, indexes: Any, fp_out: Any = None, q_bits: int = 8,
                             q_mantisa_bits: int = 3, scale: Any = None, *, shape: tuple[int, ...] | None = None,
                             dtype: Any = None) -> Any:
        """Rows ``indexes`` (along the first dimension of the quantized 3-D tensor) of the values:
        ``[len(indexes), *shape[1:]]``. Indexes are checked in bounds."""
        fmt = self._format(q_bits, q_mantisa_bits)
        src_shape, out_dtype = self._like_last(shape, dtype)
        if len(src_shape) != 3:
            raise ValueError(f"selective dequantization works on 3-D tensors (DeepSpeed's rule), got shape {src_shape}")
        idx_shape = ops.shape_and_dtype(indexes, "indexes", ops.INDEX_DTYPES)[0]
        if len(idx_shape) != 1:
            raise ValueError(f"indexes must be 1-D, got shape {idx_shape}")
        out_shape = (idx_shape[0], *src_shape[1:])
        return ops.dequantize_records(input_q, self.group_size, fmt.q_bits, fmt.mantissa, compat=self.compat,
                                      scales=scale, out=fp_out, shape=None if fp_out is not None else out_shape,
                                      dtype=None if fp_out is not None else out_dtype, rows=indexes,
                                      row_elems=math.prod(src_shape[1:]))

    def to(self, *args: Any, **kwargs: Any) -> None:
        """DeepSpeed moves its kept scale tensor; here too, for torch tensors."""
        if self.scale is not None and hasattr(self.scale, "to"):
            self.scale = self.scale.to(*args, **kwargs)
