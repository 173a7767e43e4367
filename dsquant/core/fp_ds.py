"""Format facts of DeepSpeed's FP quantizer records (cuda/dsq_fp_ds.cuh, docs/deepspeed_fp.md):
the formats by (q_bits, mantissa bits), their q_range, and the record layout."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DsFpFormat:
    q_bits: int
    mantissa: int          # M
    name: str              # E<e>M<m>
    q_range: float         # DeepSpeed's largest magnitude (compat code space)
    ocp: str | None        # the OCP element format of the default mode, None where there is none

    @property
    def exponent(self) -> int:
        return self.q_bits - 1 - self.mantissa

    @property
    def bias(self) -> int:
        return (1 << (self.exponent - 1)) - 1

    @property
    def unit(self) -> int:
        """Elements per code unit (whole bytes): 1, 2, 4, 2 for 8, 4, 6, 12 bits."""
        return {8: 1, 4: 2, 6: 4, 12: 2}[self.q_bits]


# (q_bits, mantissa bits) -> format. q_bits 8 takes its mantissa bits from the caller (3: E4M3,
# 2: E5M2); 12, 6 and 4 bits have one format each (DeepSpeed's wrapper sets M = 4 for 12 bits but
# its kernel runs E4M7: dsquant names the format it runs).
FORMATS = {
    (8, 3): DsFpFormat(8, 3, "E4M3", 480.0, "e4m3"),
    (8, 2): DsFpFormat(8, 2, "E5M2", 114688.0, "e5m2"),
    (12, 7): DsFpFormat(12, 7, "E4M7", 510.0, None),
    (6, 2): DsFpFormat(6, 2, "E3M2", 28.0, "e3m2"),
    (4, 1): DsFpFormat(4, 1, "E2M1", 6.0, "e2m1"),
}
# The code spaces of the record kernels, in the order of DSQ_FOR_EACH_FP_DS_SPACE (cuda/dsq_fp_ds.cuh):
# DeepSpeed's ("compat"), then the OCP formats of dsquant.fp_quantize.
SPACES = ("compat", "e4m3", "e5m2", "e3m2", "e2m1")


def space_of(fmt: DsFpFormat, compat: bool) -> int:
    """The code space index of `fmt` in compat mode (DeepSpeed's code space) or the default (OCP)."""
    if compat:
        return 0
    if fmt.ocp is None:
        raise ValueError(f"{fmt.name} ({fmt.q_bits} bits) has no OCP format; it exists in DeepSpeed's code space "
                         f"only: pass compat=True (DeepSpeed's q_range {fmt.q_range:g})")
    return SPACES.index(fmt.ocp)


# The mantissa bits DeepSpeed's FP_Quantize wrapper uses for each q_bits other than 8.
WRAPPER_MANTISSA = {12: 7, 6: 2, 4: 1}


def format_of(q_bits: int, mantissa: int | None = None) -> DsFpFormat:
    """The format of `q_bits` (8, 12, 6, 4) and `mantissa` (only 3 or 2 with 8 bits; None or the
    one value for the others, where 4 is accepted for 12 bits as DeepSpeed's wrapper passes it)."""
    if q_bits == 8:
        m = 3 if mantissa is None else mantissa
    elif q_bits in WRAPPER_MANTISSA:
        m = WRAPPER_MANTISSA[q_bits] if mantissa is None or (q_bits, mantissa) == (12, 4) else mantissa
    else:
        raise ValueError(f"q_bits must be 8, 12, 6 or 4 (DeepSpeed's FP formats), got {q_bits}")
    fmt = FORMATS.get((q_bits, m))
    if fmt is None:
        ok = ", ".join(f"(q_bits={b}, q_mantisa_bits={mm})" for b, mm in FORMATS)
        raise ValueError(f"q_bits={q_bits} with q_mantisa_bits={mantissa} is no DeepSpeed FP format "
                         f"(DeepSpeed silently runs E2M1 with stochastic rounding); supported: {ok}")
    return fmt


def code_bytes(group_size: int, q_bits: int) -> int:
    return group_size * q_bits // 8


def record_bytes(group_size: int, q_bits: int) -> int:
    """Bytes of one record: the group's codes, then its float32 scale."""
    return code_bytes(group_size, q_bits) + 4


def check_group_size(group_size: int, q_bits: int, numel: int) -> None:
    """The record layout needs whole bytes of codes per group and whole groups."""
    if group_size <= 0:
        raise ValueError(f"group_size must be a positive integer, got {group_size}")
    if group_size * q_bits % 8:
        unit = {8: 1, 4: 2, 6: 4, 12: 2}[q_bits]
        raise ValueError(f"group_size={group_size} with q_bits={q_bits}: a record holds whole bytes of codes, so "
                         f"group_size must be a multiple of {unit}")
    if numel % group_size:
        raise ValueError(f"group_size={group_size} does not divide the {numel} elements of the input "
                         f"(DeepSpeed leaves the tail unquantized; dsquant needs whole groups)")


def check_rows(rows: Any, source_rows: int) -> None:
    """Selective dequantization's row indexes (a NumPy int64 array) must name existing rows."""
    if rows.size and (int(rows.min()) < 0 or int(rows.max()) >= source_rows):
        bad = rows[(rows < 0) | (rows >= source_rows)]
        raise IndexError(f"indexes must be in 0..{source_rows - 1} (the quantized tensor has {source_rows} rows), "
                         f"got {bad[:8].tolist()}")
