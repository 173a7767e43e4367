"""The one table of the minifloat element formats of ``fp_quantize`` (FP8, FP6, FP4) and of the
scalings that pair them with block scales.

The C++ side (``cuda/dsq_fp_formats.cuh``: one struct per format, read by ``cuda/dsq_fp.cuh``) is
generated from this table: ``python -m dsquant.core.fp_formats > cuda/dsq_fp_formats.cuh``, and a
test fails when the two differ. Values follow the OCP 8-bit floating point specification (E4M3,
E5M2) and the OCP Microscaling Formats (MX) v1.0 specification (E3M2, E2M3, E2M1, E8M0).
"""
from __future__ import annotations

from dataclasses import dataclass

# What the all-ones exponent field means (dsq::FpNonFinite on the C++ side).
FINITE_ONLY, NAN_ONLY, IEEE = 0, 1, 2     # no Inf/NaN; NaN = S.1111.111 (no Inf); Inf and NaN as IEEE


@dataclass(frozen=True)
class FpFormat:
    name: str            # fmt= of the API
    code: int            # index into FORMATS (dsq::FpFmtCode)
    ebits: int
    mbits: int
    bias: int
    nonfinite: int       # FINITE_ONLY, NAN_ONLY or IEEE
    ml_dtypes: str       # the ml_dtypes type with the same element codes
    cxx: str             # struct name in cuda/dsq_fp_formats.cuh
    dlpack: int          # DLPack type code of the element type (dlpack.h 1.1+ kDLFloat8_e4m3fn ...)

    @property
    def bits(self) -> int:
        return 1 + self.ebits + self.mbits

    @property
    def max_code(self) -> int:
        """Code of the largest finite magnitude (no sign)."""
        top = (1 << self.ebits) - 1
        if self.nonfinite == IEEE:
            return ((top - 1) << self.mbits) | ((1 << self.mbits) - 1)
        if self.nonfinite == NAN_ONLY:
            return (top << self.mbits) | ((1 << self.mbits) - 2)
        return (top << self.mbits) | ((1 << self.mbits) - 1)

    @property
    def max(self) -> float:
        e, m = self.max_code >> self.mbits, self.max_code & ((1 << self.mbits) - 1)
        return (1 + m / (1 << self.mbits)) * 2.0 ** (e - self.bias)

    @property
    def emax(self) -> int:
        """Exponent of the largest normal binade (OCP MX's emax_elem)."""
        return (self.max_code >> self.mbits) - self.bias

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (1 - self.bias - self.mbits)

    @property
    def nan_code(self) -> int:
        """The code a NaN input gets (no sign); 0 where the format has no NaN."""
        top = (1 << self.ebits) - 1
        if self.nonfinite == IEEE:
            return (top << self.mbits) | (1 << (self.mbits - 1))     # quiet NaN
        if self.nonfinite == NAN_ONLY:
            return (top << self.mbits) | ((1 << self.mbits) - 1)
        return 0

    @property
    def inf_code(self) -> int:
        """The code of an overflow without saturation (no sign): Inf, else NaN, else max."""
        if self.nonfinite == IEEE:
            return ((1 << self.ebits) - 1) << self.mbits
        return self.nan_code if self.nonfinite == NAN_ONLY else self.max_code


FORMATS = (
    FpFormat("e4m3", 0, 4, 3, 7, NAN_ONLY, "float8_e4m3fn", "FpE4M3", 10),
    FpFormat("e5m2", 1, 5, 2, 15, IEEE, "float8_e5m2", "FpE5M2", 12),
    FpFormat("e3m2", 2, 3, 2, 3, FINITE_ONLY, "float6_e3m2fn", "FpE3M2", 16),
    FpFormat("e2m3", 3, 2, 3, 1, FINITE_ONLY, "float6_e2m3fn", "FpE2M3", 15),
    FpFormat("e2m1", 4, 2, 1, 1, FINITE_ONLY, "float4_e2m1fn", "FpE2M1", 17),
)
BY_NAME = {f.name: f for f in FORMATS}
# The FP8 formats by the name of their element type (ml_dtypes', torch's and JAX's spelling, and
# what dsquant calls an array of that DLPack type): FP8 codes may arrive as such arrays.
FLOAT8 = {f.ml_dtypes: f for f in FORMATS if f.bits == 8}
NAMES = tuple(f.name for f in FORMATS)

# scaling= of the API (dsq::FpScaling): per group absmax / fmt_max as float32; OCP MX shared
# power-of-two exponent as E8M0; NVIDIA's NVFP4 (E4M3 block scale, float32 tensor scale).
SCALINGS = ("absmax", "mx", "nvfp4")
ABSMAX, MX, NVFP4 = range(3)
MX_ROUNDINGS = ("floor", "rceil")     # how MX's shared exponent is rounded (torchao's ScaleCalculationMode)
NVFP4_TENSOR_MAX = 448.0 * 6.0        # E4M3 max times E2M1 max


def codes_per_unit(fmt: FpFormat) -> int:
    """Codes in the smallest run of whole bytes: 1 (FP8), 4 (FP6: 3 bytes), 2 (FP4: 1 byte)."""
    return {8: 1, 6: 4, 4: 2}[fmt.bits]


def parse(fmt: str) -> FpFormat:
    if not isinstance(fmt, str) or fmt.lower() not in BY_NAME:
        raise ValueError(f"fmt must be one of {', '.join(NAMES)}, got {fmt!r}")
    return BY_NAME[fmt.lower()]


def code_shape(shape: tuple[int, ...], fmt: FpFormat, name: str = "x") -> tuple[int, ...]:
    """Shape of the code bytes of an array of `shape`: the last dimension times bits/8 (FP6 packs
    4 codes in 3 bytes, FP4 2 codes in a byte, so it must hold a multiple of 4 or 2 elements)."""
    per = codes_per_unit(fmt)
    if not shape:
        if per > 1:
            raise ValueError(f"a 0-d {name} cannot be packed into whole bytes of {fmt.bits}-bit codes; "
                             f"give it at least one dimension with a multiple of {per} elements")
        return shape
    if shape[-1] % per:
        raise ValueError(f"{fmt.name} codes are packed {per} per {fmt.bits * per // 8} byte(s) along the last "
                         f"dimension, but the last dimension of {name} (shape {shape}) has {shape[-1]} "
                         f"elements, not a multiple of {per}")
    return shape[:-1] + (shape[-1] * fmt.bits // 8,)


def value_shape(shape: tuple[int, ...], fmt: FpFormat, name: str = "codes") -> tuple[int, ...]:
    """Shape of the values held by code bytes of `shape` (inverse of :func:`code_shape`)."""
    per = codes_per_unit(fmt)
    nbytes = fmt.bits * per // 8
    if not shape:
        if per > 1:
            raise ValueError(f"0-d {name} cannot hold packed {fmt.bits}-bit codes; give it at least one dimension")
        return shape
    if shape[-1] % nbytes:
        raise ValueError(f"{fmt.name} codes come in runs of {nbytes} bytes, but the last dimension of {name} "
                         f"(shape {shape}) has {shape[-1]} bytes")
    return shape[:-1] + (shape[-1] // nbytes * per,)


def cxx_header() -> str:
    """cuda/dsq_fp_formats.cuh: the formats as C++ structs (cuda/dsq_fp.cuh reads them)."""
    lines = ["// Generated from dsquant/core/fp_formats.py by `python -m dsquant.core.fp_formats`: do not edit.",
             "#pragma once", "namespace dsq {",
             "enum FpNonFinite : int { FP_FINITE_ONLY = 0, FP_NAN_ONLY = 1, FP_IEEE = 2 };",
             "enum FpScaling : int { " + ", ".join(f"FP_{s.upper()} = {i}" for i, s in enumerate(SCALINGS)) + " };",
             "enum FpMxRounding : int { " + ", ".join(f"FP_MX_{s.upper()} = {i}" for i, s in enumerate(MX_ROUNDINGS))
             + " };"]
    for f in FORMATS:
        lines.append(f"struct {f.cxx} {{  // {f.name}: max {f.max!r}, min subnormal {f.min_subnormal!r}")
        lines.append(f"  static constexpr int CODE = {f.code}, BITS = {f.bits}, E = {f.ebits}, M = {f.mbits}, "
                     f"BIAS = {f.bias}, EMAX = {f.emax};")
        policy = ("FP_FINITE_ONLY", "FP_NAN_ONLY", "FP_IEEE")[f.nonfinite]
        lines.append(f"  static constexpr FpNonFinite NONFINITE = {policy};")
        lines.append(f"  static constexpr uint32_t MAX_CODE = {f.max_code:#x}u, NAN_CODE = {f.nan_code:#x}u, "
                     f"INF_CODE = {f.inf_code:#x}u;")
        lines.append(f"  static constexpr float MAX = {f.max!r}f;")
        lines.append("};")
    lines += [f"constexpr int NUM_FP_FORMATS = {len(FORMATS)};", "}  // namespace dsq",
              "// X(code, format struct) for every element format, in code order",
              "#define DSQ_FOR_EACH_FP_FORMAT(X) " + " ".join(f"X({f.code}, {f.cxx})" for f in FORMATS), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(cxx_header(), end="")
