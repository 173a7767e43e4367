"""``python -m dsquant bench``: CPU throughput of fake quantization, integer quantize / dequantize
and the ZeRO++ ops, as GB/s, as a ratio to ``numpy.copyto`` of the same bytes measured in the same
run, and (fake quantization) as a speed-up over a vectorised NumPy implementation of the same
operation.

Times are medians over repetitions; run on an otherwise idle machine and compare ratios, not
absolute times. ``--quick`` runs small arrays and few repetitions (seconds; a smoke test, not a
measurement).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

from .. import fake_quantize, info

GROUP_SIZES = {"128": 128, "4096": 4096, "all": None}


def median_seconds(fn, reps: int) -> float:
    fn()   # warm-up: page faults, thread pool start
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def numpy_fake_quantize(x: np.ndarray, groups: int, bits: int, stochastic: bool, rng) -> np.ndarray:
    """The same symmetric fake quantization written the usual vectorised NumPy way (float32)."""
    g = x.reshape(groups, -1).astype(np.float32)
    absmax = np.abs(g).max(axis=1, keepdims=True)
    s = (2.0 ** bits / (2 * absmax + 1e-5)).astype(np.float32)
    v = g * s
    q = np.floor(v + rng.random(v.shape, dtype=np.float32)) if stochastic else np.rint(v)
    q = np.clip(q, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return (q / s).astype(x.dtype).reshape(x.shape)


def fake_rows(n: int, reps: int, numpy_reps: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float16):
        x = rng.standard_normal(n).astype(dtype)
        out = np.empty_like(x)
        copy_s = median_seconds(lambda: np.copyto(out, x), reps)
        moved = 2 * x.nbytes
        for group_name, size in GROUP_SIZES.items():
            groups = 1 if size is None else n // size
            for rounding, sr in (("nearest", False), ("stochastic", True)):
                seed = 1 if sr else None
                t = median_seconds(lambda: fake_quantize(x, groups, 8, stochastic=sr, seed=seed, out=out), reps)
                t_np = median_seconds(lambda: numpy_fake_quantize(x, groups, 8, sr, rng), numpy_reps)
                rows.append({"op": "fake_quantize", "dtype": np.dtype(dtype).name, "bits": 8,
                             "scheme": "symmetric", "group": group_name, "rounding": rounding, "ms": t * 1e3,
                             "GB/s": moved / t / 1e9, "vs copy": copy_s / t, "vs NumPy": t_np / t})
    return rows


def extra_rows(n: int, reps: int) -> list[dict]:
    """Rows of the other op families' benchmark modules."""
    from . import integer, zeropp
    return integer.int_rows(n, reps) + zeropp.zeropp_rows(n, reps)


def format_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    def cell(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


LEGEND = ("# GB/s: bytes the op reads + writes per second (1e9). vs copy: time of numpy.copyto moving the "
          "same bytes / the op's time (1.00 = as fast as a memory copy). vs NumPy: time of a vectorised NumPy "
          "implementation of the same op / the op's time. group: elements per group (all: one group).")


def main(argv=None, prog: str = "python -m dsquant bench") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--log2-size", type=int, default=None, help="elements per array, as a power of two "
                        "(24; 16 with --quick)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per row, median reported "
                        "(7; 2 with --quick)")
    parser.add_argument("--numpy-reps", type=int, default=None, help="repetitions for the NumPy baseline "
                        "(3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small arrays, few repetitions: a few seconds, "
                        "to see that everything runs (the numbers mean little)")
    args = parser.parse_args(argv)
    quick = args.quick
    log2_size = args.log2_size if args.log2_size is not None else (16 if quick else 24)
    reps = args.reps if args.reps is not None else (2 if quick else 7)
    numpy_reps = args.numpy_reps if args.numpy_reps is not None else (1 if quick else 3)
    n = 1 << log2_size
    about = info()
    print(f"# dsquant {about['version']} CPU benchmark{' (--quick)' if quick else ''}: {n} elements "
          f"(2^{log2_size}), {about['cpu_threads']} threads, {about['cpu_isa']} kernels, "
          f"{platform.processor() or platform.machine()}, NumPy {np.__version__}; median of {reps} repetitions")
    print(LEGEND)
    print("\n## fake quantization (fake_quantize into a preallocated out)\n")
    print(format_table(fake_rows(n, reps, numpy_reps)))
    more = extra_rows(n, reps)
    if more:
        print("\n## integer codes (quantize, dequantize) and the ZeRO++ ops (2 nodes x 4 devices)\n")
        print(format_table(more))
    from .fp import fp_rows
    print("\n## minifloat codes (fp_quantize, fp_dequantize; peers: casts without scaling or packing)\n")
    print(format_table(fp_rows(n, reps)))
    return 0
