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


ISA_SCRIPT = """
import sys, numpy as np, ml_dtypes, dsquant
rng = np.random.default_rng(1)
base = rng.standard_normal(3 * 40009) * np.exp(rng.uniform(-6, 6, 3 * 40009))
base[::997] = np.nan
base[5::1013] = np.inf
outs = []
for dtype in (np.float16, ml_dtypes.bfloat16, np.float32, np.float64):
    x = base.astype(dtype)
    for groups in (3, 40009, 120027):
        for sym in (True, False):
            for sr in (False, True):
                y = dsquant.fake_quantize(x, groups, 5, symmetric=sym, stochastic=sr, seed=4 if sr else None)
                outs.append(y.view(np.uint8).ravel())
np.save(sys.argv[1], np.concatenate(outs))
"""


def test_baseline_and_avx2_builds_agree(tmp_path):
    """The per-range loops are compiled for baseline x86-64 and for AVX2+FMA+F16C; both give the
    same bits (DSQUANT_CPU_BASELINE=1 forces the baseline build)."""
    results = []
    for baseline in (False, True):
        env = {k: v for k, v in os.environ.items() if k != "DSQUANT_CPU_BASELINE"}
        if baseline:
            env["DSQUANT_CPU_BASELINE"] = "1"
        path = tmp_path / f"isa{int(baseline)}.npy"
        proc = subprocess.run([sys.executable, "-c", ISA_SCRIPT, str(path)], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        results.append(np.load(path))
    assert np.array_equal(results[0], results[1])
