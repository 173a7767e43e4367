"""Static (caller-supplied) params: quantize(x, params=P), fake_quantize(x, params=P) and
choose_params, on every backend and grouping, against reference_int.codes_given_ref."""
import numpy as np
import pytest
import reference_grouping as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_grouping import DTYPES, _packable, groupings

import dsquant
import helpers
import reference_int as int_ref
from helpers import same_bits

FUZZ = settings(max_examples=30, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _calibrated(rng, grid, symmetric):
    """Params as a calibration would give them: positive steps, any offsets (float32)."""
    step = np.exp(rng.uniform(-6, 3, size=grid)).astype(np.float32)[..., None]
    if symmetric:
        return step
    return np.concatenate([step, rng.standard_normal(grid).astype(np.float32)[..., None]], axis=-1)


def _put_params(backend, params, dtype):
    """params on the backend, in the framework of backend.put(x): CuPy has no bfloat16, so a
    bfloat16 x there is a generic DLPack producer, and so must its params be."""
    if backend.cupy is None or dtype != "bfloat16":
        return backend.put(params)
    from dsquant.core import dtypes
    from dsquant.interop import _array
    return _array.Relabeled(backend.cupy.asarray(params), dtypes.FLOAT32.code)


@FUZZ
@given(case=groupings(), bits=st.integers(2, 8), symmetric=st.booleans(), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**32))
def test_static_params_match_reference(backend, case, bits, symmetric, dtype, seed):
    shape, kwargs, block = case
    if not _packable(shape, bits):
        bits = 8
    x = helpers.sample(dtype, shape, seed=seed, specials=True)
    grid = ref.grid_of(shape, block, kwargs.get("axis"))
    params = _calibrated(np.random.default_rng(seed), grid, symmetric)
    r = dsquant.quantize(backend.put(x), bits=bits, params=_put_params(backend, params, dtype), **kwargs)
    exp_q = ref.quantize_given(x, params, block, bits)
    assert r.symmetric == symmetric and same_bits(backend.get(r.params), params)
    assert same_bits(backend.get(r.codes).view(np.uint8), exp_q)
    exp_y = ref.dequantize(exp_q, params, shape, block, bits, dtype)
    if backend.cupy is not None and dtype == "bfloat16":
        # the codes of a generic DLPack producer come back as CuPy arrays, the params stay the caller's
        back = dsquant.dequantize(r.codes, backend.put(params), bits, dtype=dtype, **kwargs)
    else:
        back = dsquant.dequantize(r)
    assert same_bits(backend.get(back), exp_y)
    y = dsquant.fake_quantize(backend.put(x), bits=bits, params=_put_params(backend, params, dtype), **kwargs)
    assert same_bits(backend.get(y), exp_y)


@pytest.mark.parametrize("kwargs", [{"groups": 4}, {"block_size": 16}, {"axis": 1}, {"block_size": (2, 8)}])
@pytest.mark.parametrize("symmetric", [True, False])
def test_choose_params_is_what_quantize_computes(backend, kwargs, symmetric):
    x = helpers.sample("float32", (8, 32), seed=7, specials=True)
    chosen = dsquant.choose_params(backend.put(x), bits=4, symmetric=symmetric, **kwargs)
    r = dsquant.quantize(backend.put(x), bits=4, symmetric=symmetric, **kwargs)
    assert same_bits(backend.get(chosen), backend.get(r.params))
    again = dsquant.quantize(backend.put(x), bits=4, params=chosen, **kwargs)
    block = ref.block_of(x.shape, kwargs.get("block_size"), kwargs.get("axis")) if "groups" not in kwargs else (2, 32)
    assert same_bits(backend.get(again.codes).view(np.uint8),
                     ref.quantize_given(x, backend.get(chosen), block, 4))


def test_static_codes_agree_with_quantize_when_the_step_is_a_power_of_two():
    """With steps whose reciprocal is exact (powers of two), params=choose_params(x) gives
    quantize(x)'s codes exactly: the two differ only through f32(1 / f32(1 / scale)) != scale."""
    x = np.array([[3.0, -2.0, 8.0, -8.0], [0.5, -0.25, 1.0, 0.75]], np.float32)
    r = dsquant.quantize(x, axis=0, bits=4)
    assert r.params.ravel().tolist() == [1.0, 0.125]
    assert same_bits(dsquant.quantize(x, axis=0, bits=4, params=r.params).codes, r.codes)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(params=np.ones((3, 1), np.float32)), ValueError, r"params must have the shape .* \(4, 1\)"),
    (dict(params=np.ones((4, 3), np.float32)), ValueError, "params must have the shape"),
    (dict(params=np.ones((4, 1), np.float64)), TypeError, "params has dtype float64"),
    (dict(params=np.ones((4, 1), np.float32), symmetric=False), ValueError, "symmetric=False contradicts"),
])
def test_quantize_static_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        dsquant.quantize(np.ones((4, 8), np.float32), axis=0, **kwargs)


def test_fake_static_errors():
    x, p = np.ones((4, 8), np.float32), np.ones((4, 1), np.float32)
    with pytest.raises(ValueError, match="rounds to nearest"):
        dsquant.fake_quantize(x, axis=0, params=p, stochastic=True)
    with pytest.raises(ValueError, match=r"bits \(with params=\) must be in 2..8"):
        dsquant.fake_quantize(x, axis=0, params=p, bits=12)


def test_static_codes_saturate():
    """Values beyond the codes' range clamp (calibrated scales clip outliers)."""
    x = np.array([0.1, 5.0, -5.0, 0.3], np.float32)
    r = dsquant.quantize(x, bits=4, params=np.array([[0.1]], np.float32))
    assert int_ref.unpack_ref(r.codes, 4).tolist() == [1, 7, -8, 3]
