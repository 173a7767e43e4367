"""Benchmark rows for integer quantize/dequantize on the CPU (included in ``python -m dsquant bench``).

Each row's throughput counts the bytes an op must move (input read plus output written: values,
codes and params) and is compared with ``numpy.copyto`` moving the same number of bytes (reading
half, writing half), timed alternately with the op. Times are medians of several repetitions.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from .. import dequantize, quantize

BITS = (8, 4)
GROUP_SIZES = (128, 4096)


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_against_copy(fn, nbytes: int, reps: int) -> tuple[float, float]:
    """Median seconds of `fn` and of numpy.copyto moving `nbytes` bytes (nbytes/2 read, nbytes/2
    written), timed alternately so that both see the same machine (other load, clock)."""
    src = np.ones(nbytes // 2, dtype=np.uint8)
    dst = np.empty_like(src)
    copy = lambda: np.copyto(dst, src)        # noqa: E731 - timed like fn
    fn(), copy()                               # warm up: page faults, thread pool
    op_times, copy_times = [], []
    for _ in range(reps):
        copy_times.append(_seconds(copy))
        op_times.append(_seconds(fn))
    return statistics.median(op_times), statistics.median(copy_times)


def int_rows(numel: int = 1 << 24, reps: int = 7, dtype: str = "float32") -> list[dict]:
    """Throughput of quantize and dequantize (int8 and int4, group sizes 128 and 4096).

    Args:
        numel: elements per call (default 16M: well beyond the caches).
        reps: timed repetitions per row (the median is reported).
        dtype: the float dtype quantized from and dequantized to.

    Returns:
        One dict per row: ``op``, ``dtype``, ``bits``, ``scheme``, ``group``, ``rounding``, ``GB/s``
        (bytes moved per second, 1e9), ``vs copy`` (copy time of the same bytes / op time with
        ``out=``; 1.0 = as fast as a memory copy), ``new/out`` (time with ``out=`` / time making
        the result).

    Example:
        >>> rows = int_rows(numel=1 << 12, reps=1)
        >>> sorted(rows[0])
        ['GB/s', 'bits', 'dtype', 'group', 'new/out', 'op', 'rounding', 'scheme', 'vs copy']
    """
    x = np.random.default_rng(0).standard_normal(numel).astype(dtype)
    rows = []
    for bits in BITS:
        for group in GROUP_SIZES:
            groups = numel // group
            q, params = quantize(x, groups, bits)
            q_out, p_out = np.empty_like(q), np.empty_like(params)
            out = np.empty_like(x)
            moved = x.nbytes + q.nbytes + params.nbytes
            ops = {   # (into out=, making the result)
                "quantize": (lambda: quantize(x, groups, bits, out=(q_out, p_out)), lambda: quantize(x, groups, bits)),
                "dequantize": (lambda: dequantize(q, params, bits, out=out), lambda: dequantize(q, params, bits)),
            }
            for op, (fn, fn_new) in ops.items():
                seconds, copy = timed_against_copy(fn, moved, reps)
                seconds_new, _ = timed_against_copy(fn_new, moved, reps)
                rows.append({"op": op, "dtype": dtype, "bits": bits, "scheme": "symmetric", "group": group,
                             "rounding": "nearest", "GB/s": round(moved / seconds / 1e9, 2),
                             "vs copy": round(copy / seconds, 2), "new/out": round(seconds / seconds_new, 2)})
    return rows


if __name__ == "__main__":
    for row in int_rows():
        print(row)
