"""Shared test configuration: the one GPU-skip policy, hypothesis profiles, and the fixtures that
give every op test the same backends (``backend``), the CUDA kernels' CPU emulation (``emu``), a
private kernel cache (``kernel_cache``) and the CuPy stand-in (``fake_cupy``)."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Multi-threaded calls start their OpenMP team even on a busy machine (kernels.hpp use_team), so
# the team code paths are what the tests run wherever the suite runs (subprocesses inherit it).
os.environ.setdefault("DSQUANT_CPU_LOAD_AWARE", "0")

def _cuda_device_count() -> int:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 - no CuPy, no driver or no device all mean "no GPU"
        return 0


def pytest_collection_modifyitems(config, items):
    if _cuda_device_count() > 0:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device and CuPy (run scripts/gpu_check.sh on a GPU machine)")
    for item in items:
        if item.get_closest_marker("gpu"):   # not `in item.keywords`: that also holds a folder named gpu
            item.add_marker(skip)


@pytest.fixture(scope="session")
def emu(tmp_path_factory):
    """Every CUDA kernel instantiation compiled as C++ and run on the CPU (tests/emu/)."""
    from _cuda_emu import Emulator
    return Emulator(tmp_path_factory.mktemp("emu"))


@pytest.fixture(scope="session")
def kernel_cache(tmp_path_factory):
    """A kernel cache of the test session's own (DSQUANT_CACHE_DIR), so compiles are checked
    fresh once and then shared."""
    path = tmp_path_factory.mktemp("kernel-cache")
    saved = os.environ.get("DSQUANT_CACHE_DIR")
    os.environ["DSQUANT_CACHE_DIR"] = str(path)
    yield path
    if saved is None:
        del os.environ["DSQUANT_CACHE_DIR"]
    else:
        os.environ["DSQUANT_CACHE_DIR"] = saved


@pytest.fixture
def fake_cupy(monkeypatch, emu, kernel_cache):
    """tests/_fake_cupy.py (as CuPy 14) as ``cupy``: host memory that says it is on CUDA device 0,
    kernels compiled by the real NVRTC and run by the emulation."""
    import _fake_cupy
    yield from _fake_cupy.installed(monkeypatch, emu, 14)


class Backend:
    """Where an op test runs: ``put`` turns a NumPy array into the backend's array, ``get`` turns
    a result (or an array given to ``put``) back into NumPy."""

    def __init__(self, name, cupy=None):
        self.name, self.cupy = name, cupy

    def __repr__(self):
        return self.name

    def put(self, x):
        if self.cupy is None:
            return x
        if x.dtype.name != "bfloat16":
            return self.cupy.asarray(x)
        # CuPy has no bfloat16: its bits, relabelled, as a DLPack producer on the device
        from dsquant.core import dtypes
        from dsquant.interop import _array
        return _array.Relabeled(self.cupy.asarray(x.view(np.uint16)), dtypes.BFLOAT16.code)

    def get(self, y):
        y = getattr(y, "producer", y)                   # a relabelled bfloat16 input
        a = np.ascontiguousarray(y.get() if hasattr(y, "get") else y)
        if a.dtype == np.uint16:                        # bfloat16 results of a CuPy-side call
            import ml_dtypes
            a = a.view(ml_dtypes.bfloat16)
        return a


def _use_isa(request, isa: str):
    """Run the CPU loops of tier `isa` ("baseline", "avx2", "avx512" or "best") for one test."""
    from dsquant.backends.cpu import _cpu
    if isa != "best" and isa not in _cpu.isas():
        pytest.skip(f"this CPU has no {isa} (it runs {_cpu.isas()})")
    _cpu.set_isa(isa)
    request.addfinalizer(lambda: _cpu.set_isa("best"))
    assert _cpu.isa() == (isa if isa != "best" else _cpu.isas()[-1])


CPU_TIERS = {"cpu": "best", "cpu-baseline": "baseline", "cpu-avx2": "avx2"}


@pytest.fixture(params=[*CPU_TIERS, "cuda-emulated", pytest.param("cuda", marks=pytest.mark.gpu)])
def backend(request):
    """Each op test runs on: the CPU with the best loops this CPU has (AVX-512 here), the CPU with
    the AVX2 loops and with the baseline x86-64 loops, the CUDA backend on the CuPy stand-in
    (kernels emulated), and a real GPU."""
    name = request.param
    if name in CPU_TIERS:
        _use_isa(request, CPU_TIERS[name])
        return Backend(name)
    if name == "cuda-emulated":
        return Backend(name, request.getfixturevalue("fake_cupy"))
    import cupy
    return Backend(name, cupy)
