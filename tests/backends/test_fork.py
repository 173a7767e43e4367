"""Fork safety: a child forked after the parent ran multi-threaded OpenMP kernels (its pool of
worker threads does not survive fork) gets correct results, without hanging, and uses threads
again (dsquant/backends/cpu/forksafe.py). Each case runs in a subprocess with 2 threads, under
a timeout, so a hang fails the test instead of stopping the suite."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COMMON = """
import os, sys, numpy as np
sys.path[:0] = [{root!r}, {tests!r}]
import dsquant, reference
x = np.random.default_rng(0).standard_normal(1 << 22).astype(np.float32)
expected = reference.fake_quantize(x, 64, 4, stochastic=True, seed=5)

def check(_=None):
    y = dsquant.fake_quantize(x, 64, 4, stochastic=True, seed=5)      # 64 groups: every thread busy
    return bool(reference.same_bits(y, expected)), len(os.listdir("/proc/self/task"))
"""

BARE_FORK = """
assert check()[0]                               # the parent has now used 2 OpenMP threads
pid = os.fork()
if pid == 0:
    ok, tasks = check()
    # main thread + dsquant's helper + its OpenMP worker: threads are used again in the child
    os._exit(0 if ok and tasks >= 3 else 1)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""

POOL = """
import multiprocessing
assert check()[0]
with multiprocessing.get_context("fork").Pool(2) as pool:
    print("pool", sorted(set(ok for ok, _ in pool.map(check, range(8)))))
"""

DATALOADER = """
import torch
from torch.utils.data import DataLoader, Dataset
torch.set_num_threads(2)
torch.ones(512, 512) @ torch.ones(512, 512)     # torch's OpenMP pool (the runtime dsquant binds to)
assert check()[0]

class Quantized(Dataset):
    def __len__(self):
        return 4
    def __getitem__(self, i):
        return torch.tensor(check()[0])

loader = DataLoader(Quantized(), batch_size=1, num_workers=2, multiprocessing_context="fork")
print("loader", sorted(set(bool(b) for b in loader)))
"""


def run(body: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "DSQUANT_NUM_THREADS")}
    env["DSQUANT_NUM_THREADS"] = "2"
    env["OMP_NUM_THREADS"] = "2"
    code = COMMON.format(root=ROOT, tests=os.path.join(ROOT, "tests")) + body
    try:
        proc = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True,
                              timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("a process forked after multi-threaded dsquant calls hung")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_bare_fork():
    assert run(BARE_FORK) == "child 0"


def test_multiprocessing_fork_pool():
    assert run(POOL) == "pool [True]"


def test_torch_dataloader_workers():
    assert run(DATALOADER) == "loader [True]"


def test_fork_from_a_thread_and_the_childs_other_threads():
    """The thread that forked is the one with a dead pool; threads the child starts are not."""
    body = """
import threading
assert check()[0]
def fork_here(box):
    pid = os.fork()
    if pid == 0:
        results = [check()[0]]
        t = threading.Thread(target=lambda: results.append(check()[0]))
        t.start(); t.join()
        os._exit(0 if all(results) and len(results) == 2 else 1)
    box.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
box = []
t = threading.Thread(target=fork_here, args=(box,))
t.start(); t.join()
print("child", box[0])
"""
    assert run(body) == "child 0"
