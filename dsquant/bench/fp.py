"""Benchmark rows for minifloat quantization on the CPU (included in ``python -m dsquant bench``).

As in ``bench.integer``: each row counts the bytes the op must move (input read, codes and scales
written; or codes and scales read, values written) and is compared with ``numpy.copyto`` moving
the same number of bytes, timed alternately with the op. Peers in the same run, where installed:
ml_dtypes ``astype`` to the element type (a cast only: no scaling, no packing) and torch's
``Tensor.to(torch.float8_e4m3fn)`` (the same); their ``vs copy`` counts the bytes they move.
The DeepSpeed-compatible records (``dsquant.compat.deepspeed_fp``, q_bits 8: codes then a float32
scale per group, in one buffer) have rows of their own, in both code spaces: ``ocp`` (the module's
functions, E4M3FN) and ``deepspeed`` (``DEEPSPEED``, DeepSpeed's E4M3 with q_range 480).
"""
from __future__ import annotations

import importlib.util

import numpy as np

from .. import fp_dequantize, fp_quantize
from ..compat import deepspeed_fp
from .integer import timed_against_copy

# DeepSpeed-compatible records: (code space name, functions), q_bits 8 with 3 mantissa bits
DS_MODES = (("ocp", deepspeed_fp.OCP), ("deepspeed", deepspeed_fp.DEEPSPEED))
DS_GROUP = 128

# (fmt, scaling, group size)
CASES = (("e4m3", "absmax", 128), ("e5m2", "absmax", 128), ("e4m3", "mx", 32), ("e3m2", "absmax", 128),
         ("e2m1", "mx", 32), ("e2m1", "nvfp4", 16))


def _nbytes(a) -> int:
    return sum(_nbytes(b) for b in a) if isinstance(a, tuple) else int(a.nbytes)


def _row(op, dtype, fmt, scaling, group, rounding, moved, seconds, copy) -> dict:
    return {"op": op, "dtype": dtype, "fmt": fmt, "scaling": scaling, "group": group, "rounding": rounding,
            "GB/s": round(moved / seconds / 1e9, 2), "vs copy": round(copy / seconds, 2)}


def fp_rows(numel: int = 1 << 24, reps: int = 7, dtypes: tuple[str, ...] = ("float32", "bfloat16")) -> list[dict]:
    """Throughput of fp_quantize and fp_dequantize, with ml_dtypes and torch casts as peers.

    Example:
        >>> rows = fp_rows(numel=1 << 12, reps=1, dtypes=("float32",))
        >>> sorted(rows[0])
        ['GB/s', 'dtype', 'fmt', 'group', 'op', 'rounding', 'scaling', 'vs copy']
    """
    rows = []
    rng = np.random.default_rng(0)
    for dtype in dtypes:
        if dtype == "bfloat16":
            if importlib.util.find_spec("ml_dtypes") is None:
                continue
            import ml_dtypes
            x = rng.standard_normal(numel).astype(np.float32).astype(ml_dtypes.bfloat16)
        else:
            x = rng.standard_normal(numel).astype(dtype)
        for fmt, scaling, group in CASES:
            codes, scales = fp_quantize(x, group, fmt, scaling=scaling)
            out = np.empty(numel, np.float32 if dtype == "float32" else x.dtype)
            moved_q = x.nbytes + codes.nbytes + _nbytes(scales)
            moved_d = codes.nbytes + _nbytes(scales) + out.nbytes
            for op, fn, moved, rounding in (
                    ("fp_quantize", lambda: fp_quantize(x, group, fmt, scaling=scaling), moved_q, "nearest"),
                    ("fp_quantize", lambda: fp_quantize(x, group, fmt, scaling=scaling, stochastic=True, seed=1),
                     moved_q, "stochastic"),
                    ("fp_dequantize", lambda: fp_dequantize(codes, scales, fmt, scaling=scaling, out=out), moved_d,
                     "nearest")):
                if rounding == "stochastic" and (fmt, scaling) != ("e4m3", "absmax"):
                    continue
                seconds, copy = timed_against_copy(fn, moved, reps)
                rows.append(_row(op, dtype, fmt, scaling, group, rounding, moved, seconds, copy))
        rows += deepspeed_rows(x, dtype, reps)
        rows += peer_rows(x, dtype, reps)
    return rows


def deepspeed_rows(x: np.ndarray, dtype: str, reps: int) -> list[dict]:
    """deepspeed_fp quantize / dequantize (q_bits 8, groups of DS_GROUP) into preallocated buffers,
    as DeepSpeed's API takes them: `out` records and `val` values."""
    rows = []
    records = np.empty((x.size // DS_GROUP, DS_GROUP + 4), np.uint8)
    values = np.empty_like(x)
    moved = x.nbytes + records.nbytes
    for name, ops in DS_MODES:
        ops.quantize(records, x, DS_GROUP, False, 8, 3)
        for op, fn in ((f"deepspeed_fp.quantize ({name})", lambda: ops.quantize(records, x, DS_GROUP, False, 8, 3)),
                       (f"deepspeed_fp.dequantize ({name})", lambda: ops.dequantize(values, records, DS_GROUP, 3, 4))):
            seconds, copy = timed_against_copy(fn, moved, reps)
            rows.append(_row(op, dtype, "e4m3", "absmax", DS_GROUP, "nearest", moved, seconds, copy))
    return rows


def peer_rows(x: np.ndarray, dtype: str, reps: int) -> list[dict]:
    """ml_dtypes astype and torch float8 casts of the same array (casts only, no scales)."""
    rows = []
    if importlib.util.find_spec("ml_dtypes") is not None:
        import ml_dtypes
        for fmt, t in (("e4m3", ml_dtypes.float8_e4m3fn), ("e2m1", ml_dtypes.float4_e2m1fn)):
            moved = x.nbytes + x.size           # one byte per element out
            seconds, copy = timed_against_copy(lambda: x.astype(t), moved, reps)
            rows.append(_row("ml_dtypes astype", dtype, fmt, "none", "-", "nearest", moved, seconds, copy))
    try:
        import torch
    except ImportError:
        return rows
    tx = torch.from_numpy(x.view(np.uint16)).view(torch.bfloat16) if dtype == "bfloat16" else torch.from_numpy(x)
    for fmt, t in (("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2)):
        moved = x.nbytes + x.size
        seconds, copy = timed_against_copy(lambda: tx.to(t), moved, reps)
        rows.append(_row("torch .to(float8)", dtype, fmt, "none", "-", "nearest", moved, seconds, copy))
    return rows


if __name__ == "__main__":
    for row in fp_rows():
        print(row)
