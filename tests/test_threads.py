"""Results do not depend on the thread count (OMP_NUM_THREADS / DSQUANT_NUM_THREADS), stochastic
rounding included: the random number of an element depends only on (seed, offset, index)."""
import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = """
import sys, numpy as np, dsquant
rng = np.random.default_rng(0)
x = rng.standard_normal(3 * 70001).astype(np.float32)     # 3 groups above the chunking threshold
h = rng.standard_normal(8192 * 4).astype(np.float16)       # many small groups
outs = [dsquant.fake_quantize(x, 3, 4, stochastic=True, seed=9),
        dsquant.fake_quantize(x, 1, 8, symmetric=False),
        dsquant.fake_quantize(h, 8192, 3, stochastic=True, seed=1, symmetric=False)]
dsquant.manual_seed(3)
outs.append(dsquant.fake_quantize(x, 3, 4, stochastic=True))
sys.stdout.write(str(dsquant.info()["cpu_threads"]))
np.save(sys.argv[1], np.concatenate([o.view(np.uint8).ravel() for o in outs]))
"""


@pytest.mark.parametrize("env_name", ["OMP_NUM_THREADS", "DSQUANT_NUM_THREADS"])
def test_results_independent_of_thread_count(tmp_path, env_name):
    results = {}
    for threads in (1, 2, 3, 7):
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "DSQUANT_NUM_THREADS")}
        env[env_name] = str(threads)
        path = tmp_path / f"out{threads}.npy"
        proc = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split()[0] == str(threads)     # the setting was honoured
        results[threads] = np.load(path)
    for threads, data in results.items():
        assert np.array_equal(data, results[1]), f"{threads} threads differ from 1 thread"
