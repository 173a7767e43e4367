"""How many CPU threads a call asks for."""
from __future__ import annotations

import os


def requested() -> int | None:
    """DSQUANT_NUM_THREADS when set (a positive integer), else None (the CPU backend then uses
    OpenMP's default, i.e. OMP_NUM_THREADS or the cores)."""
    env = os.environ.get("DSQUANT_NUM_THREADS")
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"DSQUANT_NUM_THREADS must be a positive integer, got {env!r}") from None
        if value > 0:
            return value
    return None
