"""Missing optional dependencies and launchers: the exception and the one-line install hints.

dsquant is not on a package index yet, so every hint installs an extra from a checkout.
"""
from __future__ import annotations

CUDA = 'pip install ".[cuda13]" in a dsquant checkout (".[cuda12]" for a CUDA 12 driver)'
COMPILE = 'pip install ".[compile]" in a dsquant checkout (cuda-bindings and NVRTC, no GPU needed)'
MPI = 'pip install ".[mpi]" in a dsquant checkout (mpi4py and Open MPI)'


class MissingDependency(ImportError):
    """An optional dependency or launcher is missing; the message is one line saying what to
    install or run (the command line prints it instead of a traceback)."""
