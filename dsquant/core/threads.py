"""How many CPU threads a call asks for."""
from __future__ import annotations

import os
import threading


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


# The thread that called fork() in this process (None in a process that was not forked since
# dsquant was imported). The CPU backend runs that thread's OpenMP kernels elsewhere, because its
# inherited OpenMP thread pool is dead (dsquant/backends/cpu/forksafe.py). Registered at import
# of dsquant, so a fork before the CPU backend's first use is seen too.
_forked_thread = None


def _after_fork_in_child() -> None:
    global _forked_thread
    _forked_thread = threading.get_ident()


os.register_at_fork(after_in_child=_after_fork_in_child)


def forked_thread() -> int | None:
    """The ident of the thread that forked this process (since dsquant's import), or None."""
    return _forked_thread
