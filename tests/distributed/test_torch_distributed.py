"""dsquant.distributed.TorchEngine: the qgZ collective over a torch.distributed process group, 4
gloo ranks (2 nodes x 2 devices) started with torch.multiprocessing; every rank's result (and its
LoCo error buffers) bit for bit what tests/reference_zeropp.qgz_ref gives, the reference the MPI
check (tests/mpi/qgz_check.py) and the NCCL engine are held to as well."""
import os
import socket

import numpy as np
import pytest
import torch

import reference_zeropp as rz
from dsquant import distributed

NODES, DPN = 2, 2
WORLD = NODES * DPN
NUMEL = 96 * WORLD
CASES = [  # (bits, groups, symmetric, reduce)
    (4, 16, True, "deepspeed"), (8, 8, False, "sum"), (4, 8, True, "mean")]
BETA = 0.75


def _grads(case):
    rng = np.random.default_rng(100 + case)
    return [(rng.standard_normal(NUMEL) * np.exp(rng.uniform(-3, 3, NUMEL))).astype(np.float32) for _ in range(WORLD)]


def _rank(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", DSQUANT_NUM_THREADS="1")
    import torch.distributed as dist
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    engine = distributed.TorchEngine(NODES, DPN)
    results = {}
    for case, (bits, groups, symmetric, reduce) in enumerate(CASES):
        (out,) = distributed.all_to_all_quant_reduce([torch.from_numpy(_grads(case)[rank])], comm=engine, bits=bits,
                                                     groups=groups, symmetric=symmetric, reduce=reduce)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
        results[f"case{case}"] = out.numpy()
    state = distributed.LocoState(BETA)
    for step in range(2):
        (out,) = distributed.all_to_all_quant_reduce([torch.from_numpy(_grads(10 + step)[rank])], comm=engine,
                                                     nodes=NODES, devices_per_node=DPN, groups=8, loco=state)
        results[f"loco{step}"] = out.numpy()
    intra, inter = state.buffers[0]
    results["intra"], results["inter"] = intra.numpy(), inter.numpy()
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **results)
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("torch-dist")
    torch.multiprocessing.spawn(_rank, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(WORLD)]


def same(a, b):
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("case", range(len(CASES)))
def test_torch_engine_matches_the_reference(results, case):
    bits, groups, symmetric, reduce = CASES[case]
    expected = rz.qgz_ref(_grads(case), groups, bits, symmetric, NODES, DPN,
                          distributed.REDUCTIONS[reduce](NODES, WORLD))
    for rank in range(WORLD):
        assert same(results[rank][f"case{case}"], expected[rank]), f"rank {rank}"


def test_torch_engine_loco_matches_the_reference(results):
    errors = [[np.zeros(NUMEL, np.float32), np.zeros(NUMEL // DPN, np.float32)] for _ in range(WORLD)]
    for step in range(2):
        expected = rz.qgz_ref(_grads(10 + step), 8, 4, True, NODES, DPN, NODES, errors=errors, beta=BETA)
        for rank in range(WORLD):
            assert same(results[rank][f"loco{step}"], expected[rank]), f"step {step} rank {rank}"
    for rank in range(WORLD):
        assert same(results[rank]["intra"], errors[rank][0]) and same(results[rank]["inter"], errors[rank][1])
    assert any(np.any(e[0] != 0) for e in errors)   # the feedback really carried something


def test_nodes_are_needed_with_a_plain_communicator():
    with pytest.raises(TypeError, match="nodes and devices_per_node"):
        distributed.all_to_all_quant_reduce([np.zeros(64, np.float32)], comm=object())
