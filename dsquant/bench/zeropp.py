"""Benchmark rows for the ZeRO++ ops on the CPU (included in ``python -m dsquant bench``), and
``python -m dsquant qgz-bench``: the quantized all-to-all reduce on loopback MPI against a plain
all-reduce of the same data (run it under ``mpiexec -n 4``).

Op throughput counts the bytes an op must move (inputs read, outputs written) and is compared with
``numpy.copyto`` of the same bytes, timed alternately (see bench.integer).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from .. import loco_swizzle_quantize, quantized_reduction, swizzle_quantize
from ..core import missing
from ..core.missing import MissingDependency
from .integer import timed_against_copy

NODES, DPN = 2, 4


def zeropp_rows(numel: int = 1 << 24, reps: int = 7, dtype: str = "float16") -> list[dict]:
    """Throughput of swizzle_quantize, its LoCo variant and quantized_reduction (4 bits, groups
    of 2048, 2 nodes x 4 devices).

    Example:
        >>> rows = zeropp_rows(numel=1 << 14, reps=1)
        >>> [r["op"] for r in rows]
        ['swizzle_quantize', 'loco_swizzle_quantize', 'quantized_reduction']
    """
    x = np.random.default_rng(0).standard_normal(numel).astype(dtype)
    bits, group = 4, 2048
    groups = numel // group
    layout = dict(nodes=NODES, devices_per_node=DPN)
    q, params = swizzle_quantize(x, groups, bits, **layout)
    err = np.zeros(numel, np.float32)
    quant_bytes = x.nbytes + q.nbytes + params.nbytes
    reduced = numel // DPN
    ops = {
        "swizzle_quantize": (lambda: swizzle_quantize(x, groups, bits, **layout), quant_bytes),
        "loco_swizzle_quantize": (lambda: loco_swizzle_quantize(x, err, 0.8, groups, bits, **layout),
                                  quant_bytes + 2 * err.nbytes),
        "quantized_reduction": (lambda: quantized_reduction(q, params, groups, groups // DPN, bits,
                                                            devices_per_node=DPN),
                                q.nbytes + params.nbytes + (q.nbytes + params.nbytes) // DPN),
    }
    rows = []
    for op, (fn, moved) in ops.items():
        seconds, copy = timed_against_copy(fn, moved, reps)
        rows.append({"op": op, "dtype": dtype, "bits": bits, "scheme": "symmetric", "group": group,
                     "rounding": "nearest", "GB/s": round(moved / seconds / 1e9, 2),
                     "vs copy": round(copy / seconds, 2)})
    return rows


def main(argv=None, prog: str = "python -m dsquant qgz-bench") -> int:
    """The collective on MPI: bytes each rank sends and wall time, quantized vs Allreduce."""
    parser = argparse.ArgumentParser(prog=prog, description="The qgZ quantized all-to-all reduce on MPI against "
                                     "MPI Allreduce of the same data: its error, the bytes each rank sends and the "
                                     f"wall time. Run it under MPI, e.g. mpiexec -n 4 {prog}.")
    parser.add_argument("--nodes", type=int, default=2, help="nodes the ranks are split into (2)")
    parser.add_argument("--numel", type=int, default=1 << 22, help="float elements per rank (4194304)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions, median reported (5)")
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error(f"--nodes must be a positive integer, got {args.nodes}")
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as exc:   # not installed, or no MPI library it can load
        raise MissingDependency(f"needs mpi4py and an MPI ({exc}): {missing.MPI}") from None

    from .. import distributed
    comm = MPI.COMM_WORLD
    world = comm.Get_size()
    if world % args.nodes:
        raise MissingDependency(f"needs a multiple of --nodes={args.nodes} ranks, this run has {world}: "
                                f"start it under MPI, e.g. mpiexec -n 4 {prog}")
    dpn = world // args.nodes
    engine = distributed.MPIEngine(comm, args.nodes, dpn)
    rng = np.random.default_rng(comm.Get_rank())
    rows = []
    for dtype in ("float16", "float32"):
        x = rng.standard_normal(args.numel).astype(dtype)
        groups = distributed.default_groups(args.numel, world)
        # per rank: codes + params of the intra all-to-all, then of the inter one, minus own chunks
        q_bytes, p_bytes = args.numel // 2, groups * 4
        sent = (q_bytes + p_bytes) * (dpn - 1) // dpn + (q_bytes + p_bytes) // dpn * (args.nodes - 1) // args.nodes
        allreduce_sent = 2 * x.nbytes * (world - 1) // world  # ring all-reduce (reduce-scatter + all-gather)
        rs_sent = x.nbytes * (world - 1) // world              # ring reduce-scatter (what qgZ replaces)
        out = np.empty_like(x)

        def quant():
            distributed.all_to_all_quant_reduce([x], comm=engine, nodes=args.nodes, devices_per_node=dpn)

        def allreduce():
            comm.Allreduce(x, out)
        times = {}
        for name, fn in (("qgZ 4-bit", quant), ("Allreduce", allreduce)):
            fn()
            samples = []
            for _ in range(args.reps):
                comm.Barrier()
                t0 = time.perf_counter()
                fn()
                comm.Barrier()
                samples.append(time.perf_counter() - t0)
            times[name] = statistics.median(samples)
        rows.append((dtype, sent, rs_sent, allreduce_sent, times["qgZ 4-bit"], times["Allreduce"]))
    errors = []
    x = rng.standard_normal(args.numel).astype(np.float32)
    exact = np.empty(args.numel)
    comm.Allreduce(x.astype(np.float64), exact)
    part = args.numel // world
    mine = exact[comm.Get_rank() * part:(comm.Get_rank() + 1) * part] / args.nodes
    for bits in (4, 8):
        for group in (256, 2048):
            got = distributed.all_to_all_quant_reduce([x], comm=engine, nodes=args.nodes, devices_per_node=dpn,
                                                      bits=bits, groups=args.numel // group)[0]
            sums = np.array([np.sum((got - mine) ** 2), np.sum(mine ** 2), np.max(np.abs(got - mine))])
            total = np.empty(2)
            comm.Allreduce(sums[:2].copy(), total)
            worst = comm.allreduce(float(sums[2]), op=MPI.MAX)
            errors.append((bits, group, np.sqrt(total[0] / total[1]), worst / np.sqrt(total[1] / args.numel)))
    if comm.Get_rank() == 0:
        print("# qgZ error on float32 standard-normal input, symmetric, round to nearest, against the exact "
              "sum over ranks / nodes: relative RMS error = RMS(result - exact) / RMS(exact); max error / RMS of "
              "the result = max |result - exact| / RMS(exact)")
        print("| bits | group | relative RMS error | max error / RMS of the result |")
        print("|---|---|---|---|")
        for bits, group, rel, worst in errors:
            print(f"| {bits} | {group} | {rel:.2e} | {worst:.3f} |")
        print(f"\n# {world} ranks ({args.nodes} nodes x {dpn}), {args.numel} elements per rank, median of {args.reps}; "
              f"qgZ: 4 bits, symmetric, round to nearest, default groups; bytes sent per rank by qgZ and by "
              f"ring reduce-scatter / all-reduce of the same data (computed, not measured); wall ms measured")
        print("| dtype | qgZ bytes sent/rank | ring reduce-scatter | ring all-reduce | qgZ wall ms | MPI Allreduce wall ms |")
        print("|---|---|---|---|---|---|")
        for dtype, sent, rs, ar, tq, ta in rows:
            print(f"| {dtype} | {sent:,} | {rs:,} | {ar:,} | {tq * 1e3:.1f} | {ta * 1e3:.1f} |")
    return 0
