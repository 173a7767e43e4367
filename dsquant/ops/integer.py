"""The public operations: argument checks, dispatch to a backend, results in the caller's type."""
from __future__ import annotations

import operator
import os

import numpy as np

from . import _array, _interop, _rng
from ._interop import Operand

MIN_BITS, MAX_BITS = 2, 16
INT_MIN_BITS, INT_MAX_BITS = 2, 8       # integer quantization: codes fit an int8
CODE_DTYPES = ("int8", "uint8")         # what dequantize reads codes from


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


def dtype_code(dtype, name: str = "dtype") -> int:
    """dsquant's code of a float dtype given by name ('float16', ...), as a NumPy/CuPy/JAX dtype
    or scalar type, or as a torch dtype (``torch.float16``)."""
    if dtype is None or isinstance(dtype, str):
        key = dtype
    elif type(dtype).__module__.partition(".")[0] == "torch":
        key = str(dtype).rpartition(".")[2]           # torch.float16 -> 'float16'
    else:
        try:
            key = np.dtype(dtype).name
        except TypeError:
            key = None
    if key not in _array.DTYPE_NAMES:
        raise TypeError(f"{name} must be one of {', '.join(_array.DTYPE_NAMES)} (a name, NumPy or torch "
                        f"dtype), got {dtype!r}")
    return _array.DTYPE_NAMES.index(key)


def codes_per_byte(bits: int) -> int:
    """Codes stored per byte: 8 // bits when that is whole (packed), else one per int8."""
    return 8 // bits if 8 % bits == 0 else 1


def code_shape(shape: tuple, bits: int, name: str = "x") -> tuple:
    """Shape of the codes of an array of `shape`: the last dimension times bits/8 when packed.
    A 0-d array counts as one element in its last dimension (so it packs only at 8 bits or when
    codes are not packed) and its codes are 0-d too."""
    per = codes_per_byte(bits)
    last = shape[-1] if shape else 1
    if last % per:
        raise ValueError(f"{bits}-bit codes are packed {per} per byte along the last dimension, but the last "
                         f"dimension of {name} (shape {shape}) has {last} elements, not a multiple of {per}")
    return shape[:-1] + (last // per,) if shape else shape


def value_shape(shape: tuple, bits: int) -> tuple:
    """Shape of the values encoded by codes of `shape` (inverse of :func:`code_shape`)."""
    per = codes_per_byte(bits)
    if per > 1 and not shape:
        raise ValueError(f"0-d codes cannot hold packed {bits}-bit values; give q at least one dimension")
    return shape[:-1] + (shape[-1] * per,) if shape else shape


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


def _backend_fn(op: Operand, name: str):
    """The backend's implementation of operation `name`; a backend that lacks it (a new device
    type that does not implement every op yet) gives a BufferError naming the op."""
    backend = _backend(op)
    fn = getattr(backend, name, None)
    if fn is None:
        raise BufferError(f"{name} is not available for arrays on this device yet (backend "
                          f"{backend.__name__}); pass host arrays")
    return fn


def _intake(x, name: str, dtypes=None) -> Operand:
    """Consume `x` on its device; check its dtype against `dtypes` (names), by default the float
    dtypes dsquant quantizes."""
    op = _interop.intake(x, name)
    if not op.on_cpu:
        # GPU producers must be asked again with the consumer stream (see _cuda.intake)
        op = _backend(op).intake(x, name)
    if dtypes is None:
        check_dtype(op, name)
    elif op.tensor.dtype_name not in dtypes:
        raise TypeError(f"{name} has dtype {op.tensor.dtype_name}; expected {' or '.join(dtypes)}")
    return op


def _intake_peer(x, name: str, first: Operand, first_name: str, dtypes) -> Operand:
    """Consume `x`, a further array argument that must share `first`'s framework and device."""
    op = _interop.intake(x, name) if first.on_cpu else _backend(first).intake(x, name)
    _check_peer(first, op, name, first_name)
    if op.tensor.dtype_name not in dtypes:
        raise TypeError(f"{name} has dtype {op.tensor.dtype_name}; expected {' or '.join(dtypes)}")
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


def quantize(x, groups=1, bits=8, *, symmetric=True):
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

    Returns:
        ``(q, params)`` in `x`'s framework and device: `q` int8 with `x`'s shape except that the last
        dimension is multiplied by ``bits/8`` when packed (a ``ValueError`` if that is not whole);
        `params` float32 ``[groups, 1]`` or ``[groups, 2]``.

    Example:
        >>> import numpy as np, dsquant
        >>> q, params = dsquant.quantize(np.array([3.0, -2.0, 8.0, -8.0], dtype=np.float32), bits=4)
        >>> [hex(b) for b in q.view(np.uint8)], params
        (['0x3e', '0x78'], array([[1.]], dtype=float32))
        >>> dsquant.dequantize(q, params, bits=4)
        array([ 3., -2.,  7., -8.], dtype=float32)
    """
    symmetric = _bool_arg(symmetric, "symmetric")
    bits = check_bits(bits, INT_MIN_BITS, INT_MAX_BITS)
    src = _intake(x, "x")
    groups = check_groups(groups, src.tensor.numel)
    q_shape = code_shape(src.tensor.shape, bits)
    return _backend(src).quantize(src, groups, bits, symmetric, q_shape)


def dequantize(q, params, bits=8, *, dtype=None, out=None):
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

    Example:
        >>> import numpy as np, dsquant
        >>> q = np.array([0x3e], dtype=np.uint8)            # codes 3 and -2, high nibble first
        >>> dsquant.dequantize(q, np.array([[0.5]], dtype=np.float32), bits=4, dtype="float16")
        array([ 1.5, -1. ], dtype=float16)
    """
    bits = check_bits(bits, INT_MIN_BITS, INT_MAX_BITS)
    codes = _intake(q, "q", CODE_DTYPES)
    prm = _intake_peer(params, "params", codes, "q", ("float32",))
    if len(prm.tensor.shape) != 2 or prm.tensor.shape[1] not in (1, 2):
        raise ValueError(f"params must have shape [groups, 1] (symmetric) or [groups, 2] (asymmetric), "
                         f"got {prm.tensor.shape}")
    shape = value_shape(codes.tensor.shape, bits)
    numel = codes.tensor.numel * codes_per_byte(bits)
    groups = check_groups(prm.tensor.shape[0], numel, name="params.shape[0] (the group count)")
    dst = None
    if out is not None:
        dst = _intake_peer(out, "out", codes, "q", _array.DTYPE_NAMES)
        if dtype is None:
            dtype = dst.tensor.dtype_name
        if dst.tensor.shape != shape:
            raise ValueError(f"out has shape {dst.tensor.shape} but the result has shape {shape}")
        _check_writable(dst)
    dtype = dtype_code("float32" if dtype is None else dtype)
    if dst is not None and dst.tensor.dtype != dtype:
        raise TypeError(f"out has dtype {dst.tensor.dtype_name} but dtype is {_array.DTYPE_NAMES[dtype]}")
    symmetric = prm.tensor.shape[1] == 1
    return _backend(codes).dequantize(codes, prm, groups, bits, symmetric, dtype, shape, dst)


def dequantize_unsigned_half(data, scale, minimum, num_group, group_size, bits):
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

    Example:
        >>> import numpy as np
        >>> from dsquant._ops import dequantize_unsigned_half
        >>> half = lambda *v: np.array(v, dtype=np.float16)
        >>> dequantize_unsigned_half(np.array([0x3f], np.uint8), half(2.0), half(-1.0), 1, 2, 4)
        array([[0.5, 6.5]], dtype=float16)
    """
    bits = _int_arg(bits, "bits")
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    num_group = _int_arg(num_group, "num_group")
    group_size = _int_arg(group_size, "group_size")
    if num_group <= 0 or group_size <= 0:
        raise ValueError(f"num_group and group_size must be positive, got {num_group} and {group_size}")
    per = codes_per_byte(bits)
    codes = _intake(data, "data", CODE_DTYPES)
    if (num_group * group_size) % per or codes.tensor.numel != num_group * group_size // per:
        raise ValueError(f"data must hold num_group * group_size = {num_group * group_size} {bits}-bit codes, "
                         f"{per} per byte, but it has {codes.tensor.numel} bytes")
    scale_op = _intake_peer(scale, "scale", codes, "data", ("float16",))
    min_op = _intake_peer(minimum, "min", codes, "data", ("float16",))
    for name, op in (("scale", scale_op), ("min", min_op)):
        if op.tensor.numel != num_group:
            raise ValueError(f"{name} must have num_group = {num_group} elements, got {op.tensor.numel}")
    return _backend(codes).dequantize_unsigned_half(codes, scale_op, min_op, num_group, group_size, bits)


def _check_peer(first: Operand, other: Operand, name: str, first_name: str = "x") -> None:
    s, d = first.tensor, other.tensor
    if other.framework != first.framework:
        raise TypeError(f"{name} is a {other.framework} array but {first_name} is a {first.framework} array; "
                        f"{name} must be of the input's framework")
    if (d.device_type, d.device_id) != (s.device_type, s.device_id):
        raise BufferError(f"{name} is on device {(d.device_type, d.device_id)} but {first_name} is on "
                          f"{(s.device_type, s.device_id)}")


def _check_out(src: Operand, dst: Operand) -> None:
    s, d = src.tensor, dst.tensor
    _check_peer(src, dst, "out")
    if d.dtype != s.dtype:
        raise TypeError(f"out has dtype {d.dtype_name} but x has {s.dtype_name}; they must match")
    if d.shape != s.shape:
        raise ValueError(f"out has shape {d.shape} but x has {s.shape}; they must match")
    _check_writable(dst)


def _check_writable(dst: Operand) -> None:
    d = dst.tensor
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
