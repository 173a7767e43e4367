"""Helpers shared by the test modules: sample data and exact comparisons."""
import math

import numpy as np

import reference as ref

SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -0.0]


def sample(dtype, shape, seed, specials=False):
    """Normal data with a different scale per block of 50 elements (so groups get different
    statistics) in `dtype` (a name) and `shape` (or a length); with `specials`, about 1% of the
    elements are NaN, ±Inf or ±0."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    n = math.prod(shape)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * np.exp(rng.uniform(-4, 4, size=n // 50 + 1)).repeat(50)[:n]
    if specials and n >= 40:
        where = rng.choice(n, size=max(1, n // 100), replace=False)
        x[where] = rng.choice(SPECIALS, size=where.size)
    return x.astype(ref.DTYPES[dtype]).reshape(shape)


def host(a) -> np.ndarray:
    """A result as a contiguous NumPy array (CuPy arrays and stand-ins are copied back)."""
    return np.ascontiguousarray(a.get() if hasattr(a, "get") else a)


def check_exact(got, expected):
    """Identical bits, dtype and shape (NaN payloads included)."""
    got, expected = host(got), host(expected)
    assert ref.same_bits(got, expected), ref.first_difference(got, expected)


def same_bits(got, expected):
    """Equal bit patterns, dtype and shape, any NaN matching any NaN."""
    got, expected = host(got).reshape(-1), host(expected).reshape(-1)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if got.dtype.kind == "f" or got.dtype == ref.BF16:
        nan = np.isnan(got.astype(np.float64))
        assert np.array_equal(nan, np.isnan(expected.astype(np.float64)))
        got, expected = got[~nan], expected[~nan]
    uint = np.dtype(f"u{got.dtype.itemsize}")
    diff = np.flatnonzero(got.view(uint) != expected.view(uint))
    assert diff.size == 0, f"{diff.size} differences, first at {diff[0]}: {got[diff[0]]!r} != {expected[diff[0]]!r}"
    return True
