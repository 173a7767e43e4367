"""Checks of the test reference itself against published values and hand-derived results, so the
bit-exact comparisons elsewhere compare against something known to be right."""
from fractions import Fraction

import numpy as np
import pytest

import reference as ref

# Random123 tests/kat_vectors, "philox4x32 10" lines: ctr[4] key[2] -> result[4]
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,expected", PHILOX_KAT, ids=["zeros", "ones", "pi"])
def test_philox_known_answers(ctr, key, expected):
    got = ref.philox4x32_10([np.uint32(c) for c in ctr], [np.uint32(k) for k in key])
    assert tuple(int(g) for g in got) == expected


def test_uniforms_layout():
    # position p uses word p % 4 of block p // 4; offset shifts positions
    u = ref.uniforms(seed=7, offset=0, n=12)
    assert np.array_equal(ref.uniforms(seed=7, offset=5, n=7), u[5:12])
    assert np.all((u >= 0) & (u < 1))
    w = ref.philox4x32_10([np.uint32(1), np.uint32(0), np.uint32(0), np.uint32(0)], [np.uint32(7), np.uint32(0)])
    assert u[6] == np.float32(int(w[2]) >> 8) / np.float32(2 ** 24)


def test_fma32_is_correctly_rounded():
    rng = np.random.default_rng(0)
    q = rng.integers(0, 2 ** 16, 2000).astype(np.float32)
    s = rng.standard_normal(2000).astype(np.float32)
    c = (rng.standard_normal(2000) * 1e3).astype(np.float32)
    got = ref.fma32(q, s, c)
    exact = [_round_to_f32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(d))) for a, b, d in zip(q, s, c)]
    assert np.array_equal(got, np.array(exact, dtype=np.float32))


def _round_to_f32(x: Fraction) -> np.float32:
    """Exact round-to-nearest-even of a rational to float32 (normal range)."""
    f = np.float32(float(x))
    candidates = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
    dists = [abs(Fraction(float(c)) - x) for c in candidates]
    best = min(dists)
    ties = [c for c, d in zip(candidates, dists) if d == best]
    if len(ties) == 1:
        return ties[0]
    return next(c for c in ties if int(np.array(c).view(np.uint32)) % 2 == 0)


def test_fma32_halfway_case():
    # 1 + 2^-24 is exactly halfway between float32 1 and its successor
    assert ref.fma32(np.float32(1), np.float32(2.0 ** -24), np.float32(1)) == np.float32(1)   # tie -> even
    # q*b = 2^-24 + 2^-60 (2^36 + 1 = 38737 * 1774001): the sum is just above halfway, but the
    # 2^-60 is lost when the sum is rounded to float64 first; a correct fma rounds up
    got = ref.fma32(np.float32(38737), np.float32(1774001 * 2.0 ** -60), np.float32(1))
    assert got == np.float32(1 + 2.0 ** -23)


def test_symmetric_hand_computed():
    # x = [1, -0.5, 0.25, 0.1], 4 bits: absmax 1, s = f32(16 / (2 + 1e-5)), r = f32(1/s)
    x = np.array([1.0, -0.5, 0.25, 0.1], dtype=np.float32)
    s = np.float32(16 / (2 + 1e-5))
    r = np.float32(1) / s
    # codes: 1*s = 7.99996 -> 8 -> clipped to 7; -0.5*s -> -4; 0.25*s -> 2; 0.1*s = 0.79999 -> 1
    expected = np.array([7, -4, 2, 1], dtype=np.float32) * r
    assert np.array_equal(ref.fake_quantize(x, 1, 4), expected)


def test_asymmetric_hand_computed():
    x = np.array([0.0, 1.0, 0.5, 0.2], dtype=np.float32)
    s = np.float32((1.0 - 0.0 + 1e-5) / 4)        # 2 bits: 4 levels 0..3
    r = np.float32(1) / s   # noqa: F841 - the reciprocal the codes below are worked out with
    codes = [0, 3, 2, 1]   # 1*r = 3.99996 -> 4 -> clipped to 3; 0.5*r = 1.99998 -> 2; 0.2*r = 0.79999 -> 1
    expected = np.array([float(np.float32(Fraction(c) * Fraction(float(s)))) for c in codes], dtype=np.float32)
    assert np.array_equal(ref.fake_quantize(x, 1, 2, symmetric=False), expected)
