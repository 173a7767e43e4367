"""The one timing rule of the CPU benchmarks: a warm-up call, then the median of `reps` calls."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def median_seconds(fn: Callable[[], Any], reps: int) -> float:
    fn()                      # warm-up: page faults, thread pools, lazy imports
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
