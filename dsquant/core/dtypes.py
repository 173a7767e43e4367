"""The one table of the float dtypes dsquant quantizes.

Everything that needs a dtype's code, size, DLPack type, C++ format or a framework's name for it
reads this table. ``cuda/dsq_dtypes.h`` (the C++ side: ``dsq::DType`` and the format structs) is
generated from it: ``python -m dsquant.core.dtypes > cuda/dsq_dtypes.h``, and a test fails when
the two differ.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DL_INT, DL_UINT, DL_FLOAT, DL_BFLOAT = 0, 1, 2, 4    # DLPack type codes (dlpack.h DLDataTypeCode)


@dataclass(frozen=True)
class FloatDType:
    name: str            # NumPy / ml_dtypes / torch / JAX name
    code: int            # dsquant's code (dsq::DType): index into FLOAT_DTYPES
    itemsize: int
    dlpack: tuple[int, int]   # (DLPack type code, bits)
    cxx_format: str      # format struct of cuda/dsq_math.cuh
    unit_elements: int   # elements per 16-byte thread unit of the CUDA kernels
    key_bytes: int       # bytes of the format's order key (Fmt::key)
    storage: str         # unsigned integer dtype that holds the bits (CuPy, NumPy without ml_dtypes)


FLOAT_DTYPES = (
    FloatDType("float16", 0, 2, (DL_FLOAT, 16), "F16", 8, 4, "uint16"),
    FloatDType("bfloat16", 1, 2, (DL_BFLOAT, 16), "BF16", 8, 4, "uint16"),
    FloatDType("float32", 2, 4, (DL_FLOAT, 32), "F32", 4, 4, "uint32"),
    FloatDType("float64", 3, 8, (DL_FLOAT, 64), "F64", 4, 8, "uint64"),
)
FLOAT16, BFLOAT16, FLOAT32, FLOAT64 = FLOAT_DTYPES
NAMES = tuple(d.name for d in FLOAT_DTYPES)
BY_NAME = {d.name: d for d in FLOAT_DTYPES}
BY_DLPACK = {d.dlpack: d for d in FLOAT_DTYPES}


def parse(dtype: Any, name: str = "dtype") -> FloatDType:
    """The table entry of a float dtype given by name (``'float16'``), by a NumPy/CuPy/JAX dtype or
    scalar type, or by a torch dtype (``torch.float16``); a ``TypeError`` for anything else."""
    key = None
    if isinstance(dtype, str):
        key = dtype
    elif dtype is not None:
        import numpy as np
        try:
            key = np.dtype(dtype).name                    # NumPy, CuPy, JAX dtypes and scalar types
        except TypeError:
            key = str(dtype).rpartition(".")[2]           # torch.float16 -> 'float16'
    if key not in BY_NAME:
        raise TypeError(f"{name} must be one of {', '.join(NAMES)} (a name, NumPy or torch dtype), got {dtype!r}")
    return BY_NAME[key]


def cxx_header() -> str:
    """cuda/dsq_dtypes.h: the dtype list for the C++ side (CPU kernels, CUDA kernels, emulator)."""
    lines = ["// Generated from dsquant/core/dtypes.py by `python -m dsquant.core.dtypes`: do not edit.",
             "#pragma once", "namespace dsq {",
             "enum DType : int { " + ", ".join(f"DT_{d.name.upper()} = {d.code}" for d in FLOAT_DTYPES) + " };",
             f"constexpr int NUM_DTYPES = {len(FLOAT_DTYPES)};",
             "}  // namespace dsq",
             "// X(code, format struct) for every dtype, in code order",
             "#define DSQ_FOR_EACH_DTYPE(X) " + " ".join(f"X(DT_{d.name.upper()}, {d.cxx_format})"
                                                        for d in FLOAT_DTYPES), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(cxx_header(), end="")
