"""The CPU speed targets of issue 12, item 5, measured as the issue states them: 2^24 elements,
median time of the op against numpy.copyto (single-threaded) of the same bytes, timed alternately.
Rows for 1 and 2 threads (DSQUANT_NUM_THREADS is read at each call) and the ISA tier in use.

    python scripts/cpu_targets.py [--log2-size 24] [--reps 7] [--threads 1,2] [--isa avx512] [--only WORD]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # this checkout's dsquant

import ml_dtypes
import numpy as np

import dsquant
from dsquant.backends.cpu import _cpu


def timed(fn, nbytes: int, reps: int) -> tuple[float, float]:
    src = np.ones(nbytes // 2, np.uint8)
    dst = np.empty_like(src)
    fn(), np.copyto(dst, src)
    ops, copies = [], []
    for _ in range(reps):
        t = time.perf_counter()
        np.copyto(dst, src)
        copies.append(time.perf_counter() - t)
        t = time.perf_counter()
        fn()
        ops.append(time.perf_counter() - t)
    return statistics.median(ops), statistics.median(copies)


def rows(n: int):
    rng = np.random.default_rng(0)
    base = rng.standard_normal(n)
    for dt in ("float32", "float16", "bfloat16"):
        x = base.astype(ml_dtypes.bfloat16 if dt == "bfloat16" else dt)
        out = np.empty_like(x)
        for group in (128, 4096, n):
            g = n // group
            for sym in (True, False):
                for sr in (False, True):
                    size = group if group < n else "all"
                    name = f"fake {dt} g={size} {'sym' if sym else 'asym'} {'SR' if sr else 'RN'}"
                    yield name, (lambda x=x, g=g, sym=sym, sr=sr, out=out: dsquant.fake_quantize(
                        x, g, 8, symmetric=sym, stochastic=sr, seed=1 if sr else None, out=out)), 2 * x.nbytes
    x = base.astype(np.float32)
    out = np.empty_like(x)
    for bits in (8, 4):
        for group in (128, 4096):
            g = n // group
            q, p = dsquant.quantize(x, g, bits)
            moved = x.nbytes + q.nbytes + p.nbytes
            yield f"quantize f32 {bits}b g={group}", (lambda g=g, bits=bits: dsquant.quantize(x, g, bits)), moved
            yield f"dequantize f32 {bits}b g={group}", (lambda q=q, p=p, bits=bits: dsquant.dequantize(
                q, p, bits, out=out)), moved
    h = base.astype(np.float16)
    groups = n // 2048
    lay = dict(nodes=2, devices_per_node=4)
    q, p = dsquant.swizzle_quantize(h, groups, 4, **lay)
    yield "swizzle_quantize f16 4b g=2048", (lambda: dsquant.swizzle_quantize(h, groups, 4, **lay)), \
        h.nbytes + q.nbytes + p.nbytes
    yield "quantized_reduction f16 4b g=2048", (lambda: dsquant.quantized_reduction(
        q, p, groups, groups // 4, 4, devices_per_node=4)), q.nbytes + p.nbytes + (q.nbytes + p.nbytes) // 4


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--log2-size", type=int, default=24)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--isa", default=None)
    ap.add_argument("--only", default=None)
    a = ap.parse_args()
    if a.isa:
        _cpu.set_isa(a.isa)
    threads = [int(t) for t in a.threads.split(",")]
    print(f"# {dsquant.__file__} isa={_cpu.isa()} n=2^{a.log2_size} reps={a.reps} "
          f"load={os.getloadavg()[0]:.2f} {time.strftime('%H:%M:%S')}")
    print("| row | " + " | ".join(f"{t} thr vs copy" for t in threads) + " |")
    print("|---|" + "---|" * len(threads))
    for name, fn, moved in rows(1 << a.log2_size):
        if a.only and not any(w in name for w in a.only.split(",")):
            continue
        cells = []
        for t in threads:
            os.environ["DSQUANT_NUM_THREADS"] = str(t)
            op, copy = timed(fn, moved, a.reps)
            cells.append(f"{copy / op:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    print(f"# load={os.getloadavg()[0]:.2f} {time.strftime('%H:%M:%S')}")


if __name__ == "__main__":
    main()
