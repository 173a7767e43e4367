"""Version and a description of what this installation can use."""
from __future__ import annotations

import sys
from typing import Any

# Kept equal to pyproject.toml's version by a test; a constant because importlib.metadata costs
# tens of milliseconds at import.
__version__ = "0.1.0"

_FRAMEWORKS = ("numpy", "ml_dtypes", "torch", "jax", "cupy")


def _framework_version(name: str) -> str | None:
    import importlib.metadata
    import importlib.util
    if name in sys.modules:
        return str(getattr(sys.modules[name], "__version__", "unknown"))
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return importlib.metadata.version(name if name != "cupy" else _cupy_dist())
    except importlib.metadata.PackageNotFoundError:
        return "installed"


def _cupy_dist() -> str:
    import importlib.metadata
    for dist in ("cupy-cuda13x", "cupy-cuda12x", "cupy"):
        try:
            importlib.metadata.version(dist)
            return dist
        except importlib.metadata.PackageNotFoundError:
            continue
    return "cupy"


def info() -> dict[str, Any]:
    """What this dsquant can use: version, CPU threads and instruction set, frameworks, backends.

    ``cpu_threads`` is what a CPU call uses (``DSQUANT_NUM_THREADS``, else OpenMP's default),
    ``openmp_threads`` OpenMP's default (``OMP_NUM_THREADS``, else the cores), ``cpu_isa`` the
    kernels in use (``"avx512"``: AVX-512 F/BW/VL/DQ, ``"avx2"``: AVX2 + FMA + F16C, or
    ``"baseline"``). Frameworks are looked up without being imported. The CUDA backend is reported
    usable when CuPy is installed and sees at least one device (this call imports CuPy to ask).

    Examples:
        >>> import dsquant
        >>> sorted(dsquant.info())
        ['backends', 'cpu_isa', 'cpu_threads', 'frameworks', 'openmp_threads', 'version']
    """
    from .core import registry
    frameworks = {name: _framework_version(name) for name in _FRAMEWORKS}
    return {
        "version": __version__,
        "cpu_threads": registry.lookup("num_threads", "cpu")(),
        "openmp_threads": registry.lookup("openmp_threads", "cpu")(),
        "cpu_isa": registry.lookup("cpu_isa", "cpu")(),
        "frameworks": frameworks,
        "backends": {"cpu": True, "cuda": _cuda_usable(frameworks["cupy"] is not None)},
    }


def _cuda_usable(have_cupy: bool) -> bool:
    if not have_cupy:
        return False
    try:
        from .backends.cuda import device
        return device.device_count() > 0
    except Exception:   # noqa: BLE001 - any failure means "not usable here"
        return False


def main(argv: list[str] | None = None, prog: str = "python -m dsquant info") -> int:
    """``python -m dsquant info``: print :func:`info` as JSON."""
    import argparse
    import json
    argparse.ArgumentParser(prog=prog, description="Print what this installation can use, as JSON: version, "
                            "CPU threads and instruction set, frameworks, backends.").parse_args(argv)
    print(json.dumps(info(), indent=2))
    return 0
