"""Single-thread CPU time (time.process_time: a descheduled process accrues none, so the numbers
hold on a loaded machine) per call and per element of the issue-12 target ops and of copies, at
2^24 elements (docs/benchmarks.md). TREE=<checkout> picks the dsquant to time (default: this one),
ISA=<tier> a tier, GHZ the clock for the cycle column.

    python scripts/cpu_time_per_element.py
"""
import os
import sys
import time

sys.path.insert(0, os.environ.get("TREE", os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
os.environ["DSQUANT_NUM_THREADS"] = "1"

import ml_dtypes
import numpy as np

import dsquant
from dsquant.backends.cpu import _cpu

if os.environ.get("ISA"):
    _cpu.set_isa(os.environ["ISA"])
GHZ = float(os.environ.get("GHZ", "2.596"))
N = 1 << 24


def cpu_seconds(fn, reps: int = 10) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return sorted(times)[len(times) // 2]


def row(name: str, seconds: float, per: int) -> None:
    print(f"| {name} | {seconds * 1e3:.2f} ms | {seconds / per * 1e9:.3f} ns | {seconds / per * GHZ * 1e9:.2f} cyc |")


def main() -> None:
    print(f"# isa={_cpu.isa()} load={os.getloadavg()[0]:.2f} {time.strftime('%H:%M:%S')}; ns and cycles "
          f"(at {GHZ} GHz) per element, 1 thread CPU time")
    base = np.random.default_rng(0).standard_normal(N)
    for nbytes in (64 << 20, 10 << 20):
        src = np.ones(nbytes // 2, np.uint8)
        dst = np.empty_like(src)
        row(f"copy {nbytes >> 20} MB moved (per byte)", cpu_seconds(lambda d=dst, s=src: np.copyto(d, s)), nbytes)
    for dt in ("float32", "float16", "bfloat16"):
        x = base.astype(ml_dtypes.bfloat16 if dt == "bfloat16" else dt)
        out = np.empty_like(x)
        for sym in (True, False):
            for sr in (False, True):
                def call(x=x, out=out, sym=sym, sr=sr):
                    dsquant.fake_quantize(x, N // 4096, 8, symmetric=sym, stochastic=sr, seed=1 if sr else None,
                                          out=out)
                row(f"fake {dt} g=4096 {'sym' if sym else 'asym'} {'SR' if sr else 'RN'}", cpu_seconds(call), N)
    x = base.astype(np.float32)
    out = np.empty_like(x)
    for bits in (8, 4):
        q, p = dsquant.quantize(x, N // 128, bits)
        row(f"quantize f32 {bits}b g=128", cpu_seconds(lambda bits=bits: dsquant.quantize(x, N // 128, bits)), N)
        row(f"dequantize f32 {bits}b g=128",
            cpu_seconds(lambda q=q, p=p, bits=bits: dsquant.dequantize(q, p, bits, out=out)), N)
    h = base.astype(np.float16)
    groups = N // 2048
    layout = dict(nodes=2, devices_per_node=4)
    q, p = dsquant.swizzle_quantize(h, groups, 4, **layout)
    row("swizzle_quantize f16 4b (per element)",
        cpu_seconds(lambda: dsquant.swizzle_quantize(h, groups, 4, **layout)), N)
    row("quantized_reduction 4 slabs (per term)",
        cpu_seconds(lambda: dsquant.quantized_reduction(q, p, groups, groups // 4, 4, devices_per_node=4)), N)


if __name__ == "__main__":
    main()
