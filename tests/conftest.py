"""Shared test configuration: the one GPU-skip policy, and hypothesis profiles."""
import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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
