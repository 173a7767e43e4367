"""Format facts of the integer codes: bit ranges, packing, and the shapes of codes, values and params."""
from __future__ import annotations

FAKE_BITS = (2, 16)          # fake quantization: bits in this range (inclusive)
INT_BITS = (2, 8)            # integer quantization: codes fit an int8
CODE_DTYPES = ("int8", "uint8")   # what dequantize reads codes from
PARAMS_DTYPE = "float32"


def codes_per_byte(bits: int) -> int:
    """Codes stored per byte: 8 // bits when that is whole (packed), else one per int8."""
    return 8 // bits if 8 % bits == 0 else 1


def params_shape(groups: int, symmetric: bool) -> tuple[int, int]:
    """DeepSpeed's params: float32 [groups, 1] (1/scale) or [groups, 2] (1/scale, offset)."""
    return (groups, 1 if symmetric else 2)


def code_shape(shape: tuple[int, ...], bits: int, name: str = "x") -> tuple[int, ...]:
    """Shape of the codes of an array of `shape`: the last dimension times bits/8 when packed.
    A 0-d array counts as one element in its last dimension (so it packs only at 8 bits or when
    codes are not packed) and its codes are 0-d too."""
    per = codes_per_byte(bits)
    last = shape[-1] if shape else 1
    if last % per:
        raise ValueError(f"{bits}-bit codes are packed {per} per byte along the last dimension, but the last "
                         f"dimension of {name} (shape {shape}) has {last} elements, not a multiple of {per}")
    return shape[:-1] + (last // per,) if shape else shape


def value_shape(shape: tuple[int, ...], bits: int) -> tuple[int, ...]:
    """Shape of the values encoded by codes of `shape` (inverse of :func:`code_shape`)."""
    per = codes_per_byte(bits)
    if per > 1 and not shape:
        raise ValueError(f"0-d codes cannot hold packed {bits}-bit values; give q at least one dimension")
    return shape[:-1] + (shape[-1] * per,) if shape else shape
