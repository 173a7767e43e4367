"""The public operations: argument checks, dispatch to a backend, results in the caller's type."""
from __future__ import annotations

import operator
import os

from . import _array, _interop, _rng
from ._interop import Operand

MIN_BITS, MAX_BITS = 2, 16


# ------------------------------------------------------------------------------ argument checks
def _int_arg(value, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None


def _bool_arg(value, name: str) -> bool:
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_bits(bits, lo: int = MIN_BITS, hi: int = MAX_BITS, name: str = "bits") -> int:
    bits = _int_arg(bits, name)
    if not lo <= bits <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, got {bits}")
    return bits


def check_groups(groups, numel: int, name: str = "groups") -> int:
    groups = _int_arg(groups, name)
    if groups <= 0:
        raise ValueError(f"{name} must be a positive integer, got {groups}")
    if numel % groups:
        raise ValueError(f"{name}={groups} does not divide the {numel} elements of the input "
                         f"(a group is numel/groups contiguous elements)")
    return groups


def check_dtype(op: Operand, name: str) -> None:
    if op.tensor.dtype < 0:
        raise TypeError(f"{name} has dtype {op.tensor.dtype_name}; dsquant quantizes "
                        f"{', '.join(_array.DTYPE_NAMES)}")


def num_threads() -> int:
    """CPU threads used by a call: DSQUANT_NUM_THREADS, else OpenMP's (OMP_NUM_THREADS)."""
    env = os.environ.get("DSQUANT_NUM_THREADS")
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"DSQUANT_NUM_THREADS must be a positive integer, got {env!r}") from None
        if value > 0:
            return value
    from . import _cpu
    return max(1, _cpu.max_threads())


# ------------------------------------------------------------------------------ backends
def _backend(op: Operand):
    """The backend module for an operand's device (dispatch table on the DLPack device type)."""
    if op.on_cpu:
        from . import _host
        return _host
    if op.tensor.device_type in (_array.DEVICE_CUDA, _array.DEVICE_CUDA_MANAGED):
        from . import _cuda   # imports CuPy; raises a clear ImportError without it
        return _cuda
    raise BufferError(f"arrays on DLPack device type {op.tensor.device_type} are not supported "
                      f"(dsquant runs on the CPU and on CUDA GPUs)")


def _intake(x, name: str) -> Operand:
    op = _interop.intake(x, name)
    if not op.on_cpu:
        # GPU producers must be asked again with the consumer stream (see _cuda.intake)
        op = _backend(op).intake(x, name)
    check_dtype(op, name)
    return op


# ------------------------------------------------------------------------------ operations
def fake_quantize(x, groups=1, bits=8, *, symmetric=True, stochastic=False, seed=None, out=None):
    """Group-wise fake quantization (quantize, then dequantize) of `x` into a new array.

    A group is ``x.size // groups`` contiguous elements of `x` in C order. Each group is scaled by
    its own statistics (absmax for symmetric, min/max for asymmetric), rounded to one of ``2**bits``
    levels and mapped back to `x`'s dtype. Non-finite elements come back unchanged and do not
    influence their group. The exact formulas are in docs/numerics.md.

    Args:
        x: float16, bfloat16, float32 or float64 array (NumPy, CuPy, torch, JAX, any DLPack producer).
        groups: number of groups; must divide ``x.size``.
        bits: 2..16.
        symmetric: True: codes -2**(bits-1) .. 2**(bits-1)-1 around zero; False: 2**bits levels
            between the group's min and max.
        stochastic: unbiased stochastic rounding instead of round-to-nearest.
        seed: stochastic rounding seed (an int in [0, 2**64)); None draws from the library-global
            stream (see :func:`manual_seed`).
        out: optional array of the same framework, device, dtype and shape to write into.

    Returns:
        A new array (or `out`) of the same framework, device, dtype and shape as `x`.

    Example:
        4 bits give codes -8..7 in steps of absmax/8 (the peak 1.0 is clipped to code 7):

        >>> import numpy as np, dsquant
        >>> dsquant.fake_quantize(np.array([0.1, -0.5, 0.25, 1.0], dtype=np.float16), bits=4)
        array([ 0.125, -0.5  ,  0.25 ,  0.875], dtype=float16)
    """
    symmetric = _bool_arg(symmetric, "symmetric")
    stochastic = _bool_arg(stochastic, "stochastic")
    bits = check_bits(bits)
    src = _intake(x, "x")
    groups = check_groups(groups, src.tensor.numel)
    seed, offset = _rng.resolve(seed, src.tensor.numel, stochastic)
    backend = _backend(src)
    dst = None
    if out is not None:
        dst = _interop.intake(out, "out") if src.on_cpu else backend.intake(out, "out")
        _check_out(src, dst)
    return backend.fake_quantize(src, dst, groups, bits, symmetric, stochastic, seed, offset)


def ds_quantizer(input, groups=1, bit_num=8, sr=False, asym=False):
    """DeepSpeed's ``ds_quantizer``: fake-quantize `input` in place and return it.

    Same meaning as ``deepspeed.ops.quantizer.ds_quantizer`` with its defects fixed (see
    docs/deepspeed.md): every dtype, any group size, real asymmetric stochastic rounding. Read-only
    and immutable arrays (JAX, read-only NumPy, views with zero or negative strides) are refused:
    use :func:`fake_quantize` for those.

    Example:
        >>> import numpy as np, dsquant
        >>> w = np.array([0.1, -0.5, 0.25, 1.0], dtype=np.float32)
        >>> dsquant.ds_quantizer(w, groups=2, bit_num=4) is w
        True
    """
    sr = _bool_arg(sr, "sr")
    asym = _bool_arg(asym, "asym")
    bits = check_bits(bit_num, name="bit_num")
    op = _intake(input, "input")
    groups = check_groups(groups, op.tensor.numel)
    if _interop.is_immutable(op):
        raise BufferError(f"ds_quantizer quantizes in place, but this {type(input).__qualname__} is "
                          f"read-only or immutable; use dsquant.fake_quantize(x, ...), which returns a new array")
    if op.tensor.has_overlap_or_reversal:
        raise BufferError(f"ds_quantizer quantizes in place, but this view has zero or negative strides "
                          f"{op.tensor.strides} (elements alias or run backwards); use dsquant.fake_quantize(x, ...)")
    seed, offset = _rng.resolve(None, op.tensor.numel, sr)
    _backend(op).fake_quantize_inplace(op, groups, bits, not asym, sr, seed, offset)
    return input


def _check_out(src: Operand, dst: Operand) -> None:
    s, d = src.tensor, dst.tensor
    if dst.framework != src.framework:
        raise TypeError(f"out is a {dst.framework} array but x is a {src.framework} array; "
                        f"out must be of the input's framework")
    if (d.device_type, d.device_id) != (s.device_type, s.device_id):
        raise BufferError(f"out is on device {(d.device_type, d.device_id)} but x is on "
                          f"{(s.device_type, s.device_id)}")
    if d.dtype != s.dtype:
        raise TypeError(f"out has dtype {d.dtype_name} but x has {s.dtype_name}; they must match")
    if d.shape != s.shape:
        raise ValueError(f"out has shape {d.shape} but x has {s.shape}; they must match")
    if _interop.is_immutable(dst):
        raise BufferError("out is read-only or immutable")
    if d.has_overlap_or_reversal:
        raise BufferError(f"out has zero or negative strides {d.strides}; results cannot be written there")


def manual_seed(seed) -> None:
    """Seed the library-global stochastic-rounding stream (and restart it at offset 0).

    Example:
        >>> import numpy as np, dsquant
        >>> x = np.linspace(-1, 1, 64, dtype=np.float32)
        >>> dsquant.manual_seed(7)
        >>> a = dsquant.fake_quantize(x, bits=2, stochastic=True)
        >>> dsquant.manual_seed(7)
        >>> bool((dsquant.fake_quantize(x, bits=2, stochastic=True) == a).all())
        True
    """
    _rng.GLOBAL.manual_seed(seed)
