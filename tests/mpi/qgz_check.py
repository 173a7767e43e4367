"""Multi-rank check of dsquant.distributed.all_to_all_quant_reduce, run by test_distributed.py as
``mpiexec -n 4 python tests/mpi/qgz_check.py`` (2 nodes x 2 devices).

Every rank builds every rank's gradients from seeds, so it knows the exact (float64) reduction and
checks its own partition of the quantized result against it:

    |result - exact| <= 2 * sum over ranks of absmax_r(group) / 2^(bits-1) / nodes  (+ float slack)

Why: each rank's 4-bit (8-bit) symmetric codes are within one step absmax/2^(bits-1) of its
values (half a step from rounding, one full step at the clipped positive peak), so the local sums
are within the sum of those steps; requantizing a local sum costs at most one step of the sum's
group, whose absmax is at most the sum of the ranks' absmaxes (a code never exceeds 2^(bits-1)
steps); the nodes' partial sums are then added and divided by `nodes`. Groups line up in both
stages (the reduction's groups have the swizzle's size), so the bound holds group by group.
Prints "rank R OK" on success; any failure aborts every rank with a message.
"""
import sys
import traceback

import ml_dtypes
import numpy as np
from mpi4py import MPI

import dsquant
import reference_zeropp as rz
from dsquant import distributed

NODES, DPN = 2, 2
CASES = [  # (shape, dtype, bits, groups, symmetric)
    ((64, 96), np.float32, 4, None, True),
    ((4096,), ml_dtypes.bfloat16, 4, 64, True),
    ((8, 1000), np.float16, 8, 40, True),
    ((3, 4, 512), np.float32, 4, 24, False),
    ((200000,), np.float32, 4, 4, True),          # 50,000-element groups: past DeepSpeed's limits
]


def gradient(rank, case, step=0):
    shape, dtype = CASES[case][:2]
    rng = np.random.default_rng(1000 * case + 10 * rank + step)
    n = int(np.prod(shape))
    scale = np.exp(rng.uniform(-3, 3, size=n // 64 + 1)).repeat(64)[:n]
    return (rng.standard_normal(n) * scale).astype(dtype).reshape(shape)


def bound(grads, groups, bits, symmetric, nodes):
    """Per-element error bound of the two quantization stages (see the module docstring)."""
    steps = 0.0
    for g in grads:
        x = g.astype(np.float64).reshape(groups, -1)
        span = np.abs(x).max(axis=1) if symmetric else x.max(axis=1) - x.min(axis=1)
        steps = steps + span / 2 ** (bits - 1)
    return np.repeat(2 * steps / nodes, grads[0].size // groups)


def check(engine, rank, world):
    for case, (_shape, dtype, bits, groups, symmetric) in enumerate(CASES):
        grads = [gradient(r, case) for r in range(world)]
        (got,) = distributed.all_to_all_quant_reduce([grads[rank]], comm=engine, nodes=NODES, devices_per_node=DPN,
                                                     bits=bits, groups=groups, symmetric=symmetric)
        n = grads[0].size
        g = distributed.default_groups(n, world) if groups is None else groups
        part = n // world
        assert got.dtype == grads[0].dtype and got.shape == (part,), (got.dtype, got.shape)
        exact = sum(x.astype(np.float64).reshape(-1) for x in grads) / NODES
        limit = bound(grads, g, bits, symmetric, NODES) * (1 + 1e-3) + 1e-6 * np.abs(exact)
        dtype_slack = np.abs(exact) * float(np.finfo(np.float16).eps if dtype == np.float16 else
                                            (2.0 ** -8 if dtype == ml_dtypes.bfloat16 else 0))
        mine = slice(rank * part, (rank + 1) * part)
        err = np.abs(got.astype(np.float64) - exact[mine])
        allowed = limit[mine] + dtype_slack[mine]
        assert (err <= allowed).all(), f"case {case}: error {err.max()} over the bound at {np.argmax(err - allowed)}"
        assert err.max() > 0, f"case {case}: no quantization error at all?"
        # bit for bit the pipeline's reference (which the torch.distributed and NCCL engines match too)
        expected = rz.qgz_ref(grads, g, bits, symmetric, NODES, DPN, NODES)[rank].astype(dtype)
        assert np.array_equal(got.view(np.uint8), expected.view(np.uint8)), f"case {case}: not the reference's bits"
        for other in range(world):        # and it is MY partition, not another one
            if other != rank:
                theirs = slice(other * part, (other + 1) * part)
                assert (np.abs(got.astype(np.float64) - exact[theirs]) > allowed).any(), f"case {case}: rank {other}"
        print(f"rank {rank} case {case}: max error {err.max():.3g}, max bound {allowed.max():.3g}", flush=True)

    # reduce="sum" / "mean" are the same float32 total scaled by exact powers of two
    grads = [gradient(r, 0) for r in range(world)]
    ds, total, mean = (distributed.all_to_all_quant_reduce([grads[rank]], comm=engine, nodes=NODES,
                                                           devices_per_node=DPN, reduce=mode)[0]
                       for mode in ("deepspeed", "sum", "mean"))
    assert np.array_equal(total, ds * NODES) and np.array_equal(mean, ds / DPN), "sum/mean scaling"

    # LoCo: with beta = 0 the residual of each step is sent with the next one, so over several
    # steps the accumulated result tracks the accumulated exact reduction better than without
    state = distributed.LocoState(beta=0.0)
    acc_exact, acc_plain, acc_loco = 0.0, 0.0, 0.0
    for step in range(8):
        grads = [gradient(r, 0, step) * 0.1 + 0.02 for r in range(world)]
        part = grads[0].size // world
        exact = (sum(x.astype(np.float64).reshape(-1) for x in grads) / NODES)[rank * part:(rank + 1) * part]
        plain = distributed.all_to_all_quant_reduce([grads[rank]], comm=engine, nodes=NODES, devices_per_node=DPN)[0]
        loco = distributed.all_to_all_quant_reduce([grads[rank]], comm=engine, nodes=NODES, devices_per_node=DPN,
                                                   loco=state)[0]
        acc_exact, acc_plain, acc_loco = acc_exact + exact, acc_plain + plain, acc_loco + loco
    plain_err, loco_err = np.abs(acc_plain - acc_exact).max(), np.abs(acc_loco - acc_exact).max()
    assert loco_err < 0.5 * plain_err, f"LoCo accumulated error {loco_err} vs {plain_err} without"
    print(f"rank {rank} loco: accumulated error {loco_err:.3g} (without LoCo {plain_err:.3g})", flush=True)


def main():
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    try:
        assert world == NODES * DPN, f"run with {NODES * DPN} ranks, got {world}"
        check(distributed.MPIEngine(comm, NODES, DPN), rank, world)
        # torch in, torch out, through a plain communicator
        import torch
        x = torch.from_numpy(gradient(rank, 0))
        (out,) = distributed.all_to_all_quant_reduce([x], comm=comm, nodes=NODES, devices_per_node=DPN)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
        assert dsquant.__version__
    except Exception:  # noqa: BLE001 - any failure must stop every rank, not hang them
        traceback.print_exc()
        sys.stdout.flush()
        comm.Abort(1)
    comm.Barrier()
    print(f"rank {rank} OK", flush=True)


if __name__ == "__main__":
    main()
