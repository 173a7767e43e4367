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


def _wide_outputs() -> bytes:
    """Every float op over special values, group sizes around the chunking threshold, all dtypes."""
    import ml_dtypes

    import dsquant
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
                    outs.append(dsquant.fake_quantize(x, groups, 5, symmetric=sym, stochastic=sr,
                                                      seed=4 if sr else None))
                for bits in (2, 3, 4, 8):
                    q, p = dsquant.quantize(x[:3 * 40008], groups if groups == 3 else 3 * 13336, bits, symmetric=sym)
                    outs += [q, p] + [dsquant.dequantize(q, p, bits, dtype=out) for out in ("float16", "bfloat16",
                                                                                            "float64")]
        q, p = dsquant.swizzle_quantize(x[:8 * 4096], 64, 4, nodes=2, devices_per_node=2)
        outs += [q, p, *dsquant.quantized_reduction(q, p, 64, 32, 4, devices_per_node=2)]
    return b"".join(np.ascontiguousarray(o).tobytes() for o in outs)


def test_every_tier_gives_the_same_bits():
    """The per-range loops are compiled for baseline x86-64, AVX2+FMA+F16C and AVX-512: all give
    the same bits, and each run used the loops it asked for."""
    from dsquant.backends.cpu import _cpu
    outputs = {}
    try:
        for isa in _cpu.isas():
            _cpu.set_isa(isa)
            assert _cpu.isa() == isa
            outputs[isa] = _wide_outputs()
    finally:
        _cpu.set_isa("best")
    assert len(set(outputs.values())) == 1, f"the {' and '.join(outputs)} loops differ"


def test_set_isa_rejects_a_tier_this_cpu_lacks():
    from dsquant.backends.cpu import _cpu
    with pytest.raises(ValueError, match="'sse9'"):
        _cpu.set_isa("sse9")
    assert _cpu.isa() == _cpu.isas()[-1]


def test_this_machine_kind_runs_avx512():
    """Where /proc/cpuinfo lists AVX-512 F/BW/VL/DQ (the machine kind the benchmarks target), the
    AVX-512 loops are the ones used."""
    from dsquant.backends.cpu import _cpu
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split())
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo")
    has = {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
    assert ("avx512" in _cpu.isas()) == has
    assert ("avx2" in _cpu.isas()) == ({"avx2", "fma", "f16c"} <= flags)


@pytest.mark.parametrize("env, used", [({}, "best"), ({"DSQUANT_CPU_BASELINE": "1"}, "baseline"),
                                       ({"DSQUANT_CPU_ISA": "baseline"}, "baseline"),
                                       ({"DSQUANT_CPU_ISA": "avx2"}, "avx2"),
                                       ({"DSQUANT_CPU_ISA": "avx512"}, "avx512")])
def test_environment_chooses_the_tier(env, used):
    """DSQUANT_CPU_BASELINE=1 or DSQUANT_CPU_ISA=tier at start select the loops; otherwise the best
    this CPU has."""
    from dsquant.backends.cpu import _cpu
    if used not in ("best", *_cpu.isas()):
        pytest.skip(f"this CPU has no {used}")
    script = "from dsquant.backends.cpu import _cpu; print(_cpu.isa(), _cpu.isas()[-1])"
    full = {k: v for k, v in os.environ.items() if k not in ("DSQUANT_CPU_BASELINE", "DSQUANT_CPU_ISA")}
    proc = subprocess.run([sys.executable, "-c", script], env={**full, **env}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got, best = proc.stdout.split()
    assert got == (best if used == "best" else used)


def _conversion_outputs() -> bytes:
    """Every float16 and bfloat16 bit pattern (subnormals, Inf, every NaN payload) through the
    tile conversions: as fake_quantize input and as a LoCo error buffer (loaded, updated, stored);
    and float32 values around float16's subnormal range and rounding ties stored as float16."""
    import ml_dtypes

    import dsquant
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    rng = np.random.default_rng(0)
    near_subnormal = rng.integers(0x33000000, 0x38900000, 60000, dtype=np.uint32)
    ties = (rng.integers(0, 1 << 19, 4000, dtype=np.uint32) << 13) | 0x1000 | 0x33000000   # half-way below
    outs = []
    for dtype in (np.float16, ml_dtypes.bfloat16):
        x = every.view(dtype)
        outs += [dsquant.fake_quantize(x, 1024, 8), dsquant.fake_quantize(x, 1024, 8, symmetric=False)]
        err = every.copy().view(dtype)
        outs += [*dsquant.loco_swizzle_quantize(np.zeros(1 << 16, dtype), err, 0.5, 64, 8), err]
    v = np.concatenate([near_subnormal, ties]).view(np.float32)
    err16 = np.zeros(v.size, np.float16)
    outs += [*dsquant.loco_swizzle_quantize(v, err16, 0.0, 64, 8), err16]
    q, p = dsquant.quantize(v, 500, 8)
    outs.append(dsquant.dequantize(q, p, 8, dtype="float16"))
    return b"".join(np.ascontiguousarray(o).tobytes() for o in outs)


def test_every_tier_converts_16_bit_formats_alike():
    """The F16C / AVX-512F float16 conversions and the bfloat16 code of the vector tiers give the
    shared scalar conversions' bits (the baseline tier) on every pattern: round to nearest even,
    subnormals kept (no DAZ/FTZ), NaN payloads kept."""
    from dsquant.backends.cpu import _cpu
    outputs = {}
    try:
        for isa in _cpu.isas():
            _cpu.set_isa(isa)
            outputs[isa] = _conversion_outputs()
    finally:
        _cpu.set_isa("best")
    assert len(set(outputs.values())) == 1, f"the {' and '.join(outputs)} loops differ"


LOAD_SCRIPT = """
import os, subprocess, sys, time
from dsquant.backends.cpu import _cpu
small = _cpu.team_size(1 << 15, 2)
busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(len(os.sched_getaffinity(0)) + 1)]
try:
    time.sleep(1.0)                       # the loops are running (and past their interpreter's start)
    teams = []
    for _ in range(40):
        teams.append(max(_cpu.team_size(1 << 20, 2), _cpu.team_size(1 << 24, 2)))
        time.sleep(0.003)                 # longer than the millisecond the run count is kept
finally:
    for p in busy:
        p.kill()
print(small, max(teams), min(teams))
"""


@pytest.mark.parametrize("load_aware", ["1", "0"])
def test_no_team_while_the_cpus_are_busy(load_aware):
    """With every CPU taken by busy loops, a call asked to use 2 threads runs on the calling thread
    alone (a team would wait time slices for its descheduled thread: docs/threading.md); a call on
    fewer than 2^16 elements never starts a team; DSQUANT_CPU_LOAD_AWARE=0 turns the load check off."""
    env = dict(os.environ, DSQUANT_CPU_LOAD_AWARE=load_aware)
    proc = subprocess.run([sys.executable, "-c", LOAD_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    small, most, least = (int(v) for v in proc.stdout.split())
    assert small == 1
    assert (most, least) == ((1, 1) if load_aware == "1" else (2, 2))
