"""Argument checks shared by every operation: each returns the checked value or raises the
contract's error (``TypeError`` for a wrong kind, ``ValueError`` for a wrong value), naming the
argument and showing what was given."""
from __future__ import annotations

import operator

from .formats import FAKE_BITS


def int_arg(value: int, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None


def bool_arg(value: bool, name: str) -> bool:
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


# Counts reach the kernels as int64: anything larger is refused here (a ValueError, not the
# OverflowError of the conversion).
MAX_COUNT = (1 << 63) - 1


def positive(value: int, name: str) -> int:
    value = int_arg(value, name)
    if not 0 < value <= MAX_COUNT:
        raise ValueError(f"{name} must be a positive integer below 2**63, got {value}")
    return value


def bits(value: int, bounds: tuple[int, int] = FAKE_BITS, name: str = "bits") -> int:
    value = int_arg(value, name)
    lo, hi = bounds
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")
    return value


def groups(value: int, numel: int, name: str = "groups") -> int:
    if type(value) is int and 0 < value <= numel and numel % value == 0:
        return value                  # the common case in one test (a per-call cost)
    value = int_arg(value, name)
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    if value > max(numel, 1):
        # any count "divides" 0 elements, but groups of no elements are no groups (and their
        # params would be allocated for nothing): an empty input is one group
        raise ValueError(f"{name}={value} is more than the {numel} elements of the input; a group holds at "
                         f"least one element (numel/groups >= 1), and an empty input has {name}=1")
    if numel % value:
        raise ValueError(f"{name}={value} does not divide the {numel} elements of the input "
                         f"(a group is numel/groups contiguous elements)")
    return value


def unit_float(value: float, name: str) -> float:
    """A Python or NumPy float (or int) in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and type(value).__name__ not in (
            "float16", "float32", "float64"):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(value).__name__} {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value
