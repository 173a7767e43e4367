"""dsquant.distributed.NCCLEngine without a GPU: ranks as threads of this process, CuPy replaced by
tests/_fake_cupy.py (kernels run by the CPU emulation) and cupy.cuda.nccl by tests/_fake_nccl.py.
Every rank's result must be the bits of the independent reference of the whole collective
(tests/reference_zeropp.qgz_ref). The real NCCL is exercised by tests/test_gpu.py on a GPU."""
import sys
import threading

import numpy as np
import pytest

import _fake_nccl
import reference_zeropp as rz
from dsquant import distributed




@pytest.fixture
def cp(fake_cupy, monkeypatch):
    """The CuPy stand-in with the NCCL stand-in as cupy.cuda.nccl."""
    fake_cupy.cuda.nccl = _fake_nccl
    fake_cupy.from_dlpack = lambda a: a if isinstance(a, fake_cupy.ndarray) else pytest.fail("unexpected from_dlpack")
    monkeypatch.setitem(sys.modules, "cupy.cuda", fake_cupy.cuda)
    return fake_cupy


def run_ranks(world, fn):
    """fn(rank) on `world` threads; their results by rank, or the first failure raised."""
    results, errors = [None] * world, []

    def body(rank):
        try:
            results[rank] = fn(rank)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)
    threads = [threading.Thread(target=body, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("nodes, dpn, bits, groups, symmetric, reduce", [
    (2, 2, 4, 16, True, "deepspeed"), (2, 2, 8, 8, False, "sum"), (1, 1, 4, 4, True, "mean"),
    (3, 1, 4, 6, True, "mean"), (1, 3, 8, 12, False, "deepspeed")])
def test_nccl_engine_matches_the_reference(cp, nodes, dpn, bits, groups, symmetric, reduce):
    world = nodes * dpn
    numel = 96 * world
    rng = np.random.default_rng(world * bits)
    grads = [(rng.standard_normal(numel) * np.exp(rng.uniform(-3, 3, numel))).astype(np.float32)
             for _ in range(world)]
    uid = _fake_nccl.get_unique_id()

    def rank_fn(rank):
        engine = distributed.NCCLEngine(nodes, dpn, uid, rank, device=0)
        (out,) = distributed.all_to_all_quant_reduce([cp.asarray(grads[rank])], comm=engine, nodes=nodes,
                                                     devices_per_node=dpn, bits=bits, groups=groups,
                                                     symmetric=symmetric, reduce=reduce)
        assert isinstance(out, cp.ndarray) and out.dtype == np.float32
        return out.get()

    divisor = distributed.REDUCTIONS[reduce](nodes, world)
    expected = rz.qgz_ref(grads, groups, bits, symmetric, nodes, dpn, divisor)
    for rank, got in enumerate(run_ranks(world, rank_fn)):
        assert got.shape == (numel // world,)
        assert np.array_equal(got.view(np.uint32), expected[rank].view(np.uint32)), f"rank {rank}"


def test_engine_kind_follows_the_arrays(cp):
    engine = distributed.NCCLEngine(1, 1, _fake_nccl.get_unique_id(), 0, device=0)
    with pytest.raises(BufferError, match="in host memory: pass a MPIEngine"):
        distributed.all_to_all_quant_reduce([np.zeros(64, np.float32)], comm=engine, nodes=1, devices_per_node=1)
    with pytest.raises(ValueError, match="rank must be in"):
        distributed.NCCLEngine(2, 1, _fake_nccl.get_unique_id(), 2)


def test_nccl_engine_loco_matches_the_reference(cp):
    """LoCo through the NCCL engine: two steps, each rank keeping its error buffers in its own
    LocoState; results and both error buffers follow the reference's LoCo pipeline bit for bit."""
    nodes, dpn, bits, groups, beta = 2, 2, 4, 8, 0.75
    world = nodes * dpn
    numel = 64 * world
    rng = np.random.default_rng(11)
    steps = [[rng.standard_normal(numel).astype(np.float32) for _ in range(world)] for _ in range(2)]
    errors = [[np.zeros(numel, np.float32), np.zeros(numel // dpn, np.float32)] for _ in range(world)]
    states = [distributed.LocoState(beta) for _ in range(world)]
    uid = _fake_nccl.get_unique_id()
    for grads in steps:
        def rank_fn(rank, grads=grads):
            engine = distributed.NCCLEngine(nodes, dpn, uid, rank, device=0)
            (out,) = distributed.all_to_all_quant_reduce([cp.asarray(grads[rank])], comm=engine, nodes=nodes,
                                                         devices_per_node=dpn, bits=bits, groups=groups,
                                                         loco=states[rank])
            return out.get()

        got = run_ranks(world, rank_fn)
        expected = rz.qgz_ref(grads, groups, bits, True, nodes, dpn, nodes, errors=errors, beta=beta)
        for rank in range(world):
            assert np.array_equal(got[rank].view(np.uint32), expected[rank].view(np.uint32)), f"rank {rank}"
            intra, inter = states[rank].buffers[0]
            assert np.array_equal(intra.get().view(np.uint32), errors[rank][0].view(np.uint32)), f"rank {rank}"
            assert np.array_equal(inter.get().view(np.uint32), errors[rank][1].view(np.uint32)), f"rank {rank}"
    assert any(np.any(e[0] != 0) for e in errors)   # the feedback really carried something
