"""The library-global random stream used by stochastic rounding when no seed is given.

A call that draws ``n`` uniforms with the global generator gets ``(seed, offset)`` and advances
the offset by exactly ``n``: consecutive calls never reuse a random number, and ``manual_seed``
makes the whole sequence reproducible. An explicit ``seed=`` uses ``(seed, 0)`` and leaves the
global generator alone.
"""
from __future__ import annotations

import operator
import threading

DEFAULT_SEED = 42        # DeepSpeed's fixed seed; reproducible until the user seeds
_MASK64 = (1 << 64) - 1


def check_seed(seed: int, name: str = "seed") -> int:
    if isinstance(seed, bool):
        raise TypeError(f"{name} must be an integer, got bool {seed!r}")
    try:
        value = operator.index(seed)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(seed).__name__} {seed!r}") from None
    if not 0 <= value <= _MASK64:
        raise ValueError(f"{name} must be an integer in [0, 2**64), got {seed!r}")
    return value


class _GlobalStream:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seed = DEFAULT_SEED
        self.offset = 0

    def manual_seed(self, seed: int) -> None:
        value = check_seed(seed)
        with self._lock:
            self.seed, self.offset = value, 0

    def reserve(self, n: int) -> tuple[int, int]:
        with self._lock:
            start = self.offset
            self.offset = (self.offset + n) & _MASK64
            return self.seed, start


GLOBAL = _GlobalStream()


def resolve(seed: int | None, n: int, stochastic: bool) -> tuple[int, int]:
    """(seed, offset) for a call drawing n uniforms. A seed without stochastic rounding is refused:
    nearest rounding draws nothing, and a seed there usually means stochastic=True was forgotten."""
    if not stochastic:
        if seed is not None:
            check_seed(seed)
            raise ValueError(f"seed={seed!r} is given but stochastic=False: a seed only affects stochastic "
                             f"rounding; pass stochastic=True, or seed=None")
        return 0, 0
    if seed is None:
        return GLOBAL.reserve(n)
    return check_seed(seed), 0
