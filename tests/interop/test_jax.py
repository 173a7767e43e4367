"""dsquant under JAX's transformations (dsquant/jax.py, the XLA FFI handlers of
dsquant/backends/cpu/xla_ffi.hpp): jax.jit results are the bits of the NumPy reference, jax.grad
is the straight-through estimator computed here independently (tests/reference.py's ste_mask),
jax.vmap equals a loop over the batch; eager JAX calls take the same FFI path; the documented
jitted QAT step runs and its loss decreases."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dsquant
import reference as ref
import reference_int as refi
from _optional import require
from helpers import check_exact, sample

jax = require("jax")
jnp = require("jax.numpy")
if tuple(int(p) for p in jax.__version__.split(".")[:2]) < dsquant.interop.adapters.JAX_FFI_MIN:
    pytest.skip(f"jax {jax.__version__} predates the XLA FFI API dsquant's handlers need (jax >= "
                f"{dsquant.interop.adapters.JAX_FFI_MIN}): test_old_jax_refuses_traced_calls covers it",
                allow_module_level=True)
dsj = require("dsquant.jax")

DOC = Path(__file__).resolve().parents[2] / "docs" / "training.md"
DTYPES = ["float16", "bfloat16", "float32"]     # float64: test_float64_with_x64 (JAX needs x64 for it)
SCHEMES = pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])


def fake_jit(x, groups, bits, **kw):
    return jax.jit(lambda a: dsquant.fake_quantize(a, groups, bits, **kw))(x)


# ------------------------------------------------------------------------------ jit: the NumPy path's bits
@pytest.mark.parametrize("dtype", DTYPES)
@SCHEMES
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_jit_fake_quantize_is_the_reference(dtype, symmetric, stochastic):
    x = sample(dtype, (8, 48), seed=5, specials=True)
    seed = 11 if stochastic else None
    y = fake_jit(jnp.asarray(x), 16, 3, symmetric=symmetric, stochastic=stochastic, seed=seed)
    assert isinstance(y, jax.Array) and y.dtype == x.dtype and y.shape == x.shape
    expected = ref.fake_quantize(x, 16, 3, symmetric, stochastic, seed or 0)
    check_exact(np.asarray(y), expected)
    check_exact(np.asarray(y), dsquant.fake_quantize(x, 16, 3, symmetric=symmetric, stochastic=stochastic,
                                                     seed=seed))


@pytest.mark.parametrize("dtype", DTYPES)
def test_subnormals_are_kept_under_jit(dtype):
    """XLA:CPU's threads flush subnormals to zero; the handlers must not (docs/numerics.md): groups
    of subnormals (absmax, min and max subnormal) and subnormals beside normal values, on several
    threads (16 groups)."""
    tiny = float(ref.ml_dtypes.finfo(ref.DTYPES[dtype]).smallest_subnormal)
    rng = np.random.default_rng(21)
    x = (rng.integers(-40, 40, (16, 64)) * tiny).astype(ref.DTYPES[dtype])
    x[8:] += rng.standard_normal((8, 64)).astype(x.dtype) * x.dtype.type(1e-3)
    assert (np.abs(x.astype(np.float64)) < float(ref.ml_dtypes.finfo(x.dtype).smallest_normal)).sum() > 400
    for symmetric in (True, False):
        y = fake_jit(jnp.asarray(x), 16, 8, symmetric=symmetric, stochastic=True, seed=4)
        check_exact(np.asarray(y), ref.fake_quantize(x, 16, 8, symmetric, True, 4))
        q, params = jax.jit(lambda a, s=symmetric: dsquant.quantize(a, 16, 8, symmetric=s))(jnp.asarray(x))
        exp_q, exp_params = refi.quantize_ref(x, 16, 8, symmetric)
        check_exact(np.asarray(q).view(np.uint8).reshape(-1), exp_q)
        check_exact(np.asarray(params), exp_params)
        y = jax.jit(lambda c, p: dsquant.dequantize(c, p, 8, dtype=dtype))(q, params)
        check_exact(np.asarray(y).reshape(-1), refi.dequantize_ref(exp_q, exp_params, 8, dtype))
        # the mask_clipped gradient's host callback runs on an XLA thread too
        grad = jax.jit(jax.grad(lambda a, s=symmetric: dsj.fake_quantize(a, 16, 3, symmetric=s, mask_clipped=True)
                                .astype(jnp.float32).sum()))(jnp.asarray(x))
        check_exact(np.asarray(grad) == 1, ref.ste_mask(x, 16, 3, symmetric))


def test_a_key_is_the_seed_it_holds():
    """seed=jax.random.key(k) (traced under jit) gives the bits of seed=k; key data [hi, lo] is
    the 64-bit seed hi * 2**32 + lo (the layout of jax.random.PRNGKey)."""
    x = sample("float32", 4096, seed=2)
    run = jax.jit(lambda a, k: dsquant.fake_quantize(a, 4, 4, stochastic=True, seed=k))
    check_exact(np.asarray(run(jnp.asarray(x), jax.random.key(5))), ref.fake_quantize(x, 4, 4, True, True, 5))
    big = (3 << 32) | 7
    raw = jnp.array([3, 7], dtype=jnp.uint32)
    check_exact(np.asarray(run(jnp.asarray(x), raw)), ref.fake_quantize(x, 4, 4, True, True, big))
    assert not np.array_equal(np.asarray(run(jnp.asarray(x), jax.random.key(6))), np.asarray(run(jnp.asarray(x), raw)))
    # a traced integer scalar is its value
    check_exact(np.asarray(run(jnp.asarray(x), jnp.int32(12345))), ref.fake_quantize(x, 4, 4, True, True, 12345))
    check_exact(np.asarray(run(jnp.asarray(x), jnp.uint32(2**32 - 1))), ref.fake_quantize(x, 4, 4, True, True,
                                                                                         2**32 - 1))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@SCHEMES
def test_jit_quantize_and_dequantize_are_the_reference(bits, symmetric):
    x = sample("bfloat16", (6, 40), seed=bits, specials=True)
    q, params = jax.jit(lambda a: dsquant.quantize(a, 12, bits, symmetric=symmetric))(jnp.asarray(x))
    exp_q, exp_params = refi.quantize_ref(x, 12, bits, symmetric)
    assert q.dtype == jnp.int8 and q.shape == (6, 40 // refi.codes_per_byte(bits))
    check_exact(np.asarray(q).view(np.uint8).reshape(-1), exp_q)
    check_exact(np.asarray(params), exp_params)
    for dtype in ["float16", "bfloat16", "float32"]:
        y = jax.jit(lambda c, p, dtype=dtype: dsquant.dequantize(c, p, bits, dtype=dtype))(q, params)
        assert y.shape == x.shape
        check_exact(np.asarray(y).reshape(-1), refi.dequantize_ref(exp_q, exp_params, bits, dtype))


def test_float64_with_x64():
    """float64 arrays exist in JAX only with x64 enabled: a fresh process with JAX_ENABLE_X64."""
    code = ("import numpy as np, jax, jax.numpy as jnp, dsquant\n"
            "x = np.random.default_rng(0).standard_normal(512)\n"
            "y = jax.jit(lambda a: dsquant.fake_quantize(a, 4, 5, symmetric=False, stochastic=True, seed=3))("
            "jnp.asarray(x))\n"
            "assert y.dtype == jnp.float64\n"
            "e = dsquant.fake_quantize(x, 4, 5, symmetric=False, stochastic=True, seed=3)\n"
            "assert np.asarray(y).tobytes() == e.tobytes()\n"
            "g = jax.grad(lambda a: dsquant.fake_quantize(a, 4, 5).sum())(jnp.asarray(x))\n"
            "assert g.dtype == jnp.float64 and bool((g == 1).all())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**__import__("os").environ, "JAX_ENABLE_X64": "1"})
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------ eager calls
def test_eager_calls_take_the_same_path_and_the_global_stream():
    """An eager JAX call (no seed) draws from the global stream exactly as the NumPy call does:
    same (seed, offset), same bits, offsets advanced by the elements drawn."""
    x = sample("float16", (4, 64), seed=8)
    dsquant.manual_seed(123)
    a = [np.asarray(dsquant.fake_quantize(jnp.asarray(x), 8, 4, stochastic=True)) for _ in range(2)]
    check_exact(a[0], ref.fake_quantize(x, 8, 4, True, True, 123, 0))
    check_exact(a[1], ref.fake_quantize(x, 8, 4, True, True, 123, x.size))
    dsquant.manual_seed(123)
    check_exact(a[1], (dsquant.fake_quantize(x, 8, 4, stochastic=True), dsquant.fake_quantize(x, 8, 4,
                                                                                            stochastic=True))[1])


def test_eager_jax_arrays_never_go_through_dlpack(monkeypatch):
    """On the CPU an eager JAX call is the jitted FFI call: exporting the array would fail here."""
    x = jnp.asarray(sample("float32", 256, seed=1))

    def refuse(*args, **kwargs):
        raise AssertionError("exported through DLPack")
    monkeypatch.setattr(type(x), "__dlpack__", refuse, raising=False)
    check_exact(np.asarray(dsquant.fake_quantize(x, 2, 4)), ref.fake_quantize(np.asarray(x), 2, 4))
    q, p = dsquant.quantize(x, 2, 4)
    check_exact(np.asarray(dsquant.dequantize(q, p, 4)), refi.dequantize_ref(np.asarray(q).view(np.uint8),
                                                                             np.asarray(p), 4, "float32"))


def test_registration_is_lazy():
    code = ("import sys, jax.numpy as jnp, dsquant\n"
            "assert 'dsquant.jax' not in sys.modules\n"
            "dsquant.fake_quantize(jnp.ones(8), 2, 4)\n"
            "assert 'dsquant.jax' in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------ grad: the STE
@pytest.mark.parametrize("dtype", DTYPES)
@SCHEMES
@pytest.mark.parametrize("mask_clipped", [False, True], ids=["identity", "mask"])
def test_grad_is_the_straight_through_estimator(dtype, symmetric, mask_clipped):
    x = sample(dtype, (8, 48), seed=3, specials=True)
    upstream = sample("float32", (8, 48), seed=4).astype(x.dtype)

    def loss(w):
        y = dsj.fake_quantize(w, 16, 3, symmetric=symmetric, mask_clipped=mask_clipped)
        return jnp.sum(y.astype(jnp.float32) * jnp.asarray(upstream).astype(jnp.float32))

    grad = jax.jit(jax.grad(loss))(jnp.asarray(x))
    mask = ref.ste_mask(x, 16, 3, symmetric) if mask_clipped else np.ones(x.shape, bool)
    check_exact(np.asarray(grad), np.where(mask, upstream, np.zeros_like(upstream)))
    if mask_clipped:   # the data has clipped peaks (so this test can see a wrong mask) and kept elements
        assert 0 < (~mask).sum() < mask.sum()


def test_forward_mode_and_value_and_grad():
    x = jnp.asarray(sample("float32", 64, seed=9))
    y, tangent = jax.jvp(lambda a: dsquant.fake_quantize(a, 4, 4), (x,), (2 * jnp.ones_like(x),))
    check_exact(np.asarray(y), ref.fake_quantize(np.asarray(x), 4, 4))
    check_exact(np.asarray(tangent), np.full(64, 2, np.float32))
    value, grad = jax.value_and_grad(lambda a: dsquant.fake_quantize(a, 4, 4, stochastic=True, seed=2).sum())(x)
    assert float(value) == float(ref.fake_quantize(np.asarray(x), 4, 4, True, True, 2).sum(dtype=np.float32))
    check_exact(np.asarray(grad), np.ones(64, np.float32))


def test_quantize_has_a_zero_gradient():
    x = jnp.asarray(sample("float32", 64, seed=10))
    g = jax.grad(lambda a: dsquant.dequantize(*dsquant.quantize(a, 4, 8), 8).sum())(x)
    check_exact(np.asarray(g), np.zeros(64, np.float32))


# ------------------------------------------------------------------------------ vmap: a loop
@SCHEMES
def test_vmap_nearest_equals_a_loop(symmetric):
    xs = sample("float32", (5, 3, 32), seed=12, specials=True)
    got = jax.vmap(lambda a: dsquant.fake_quantize(a, 6, 4, symmetric=symmetric))(jnp.asarray(xs))
    check_exact(np.asarray(got), np.stack([ref.fake_quantize(x, 6, 4, symmetric) for x in xs]))


def test_vmap_over_keys_gives_each_element_its_key():
    xs = sample("float32", (4, 128), seed=13)
    keys = jax.random.split(jax.random.key(0), 4)
    got = jax.jit(jax.vmap(lambda a, k: dsquant.fake_quantize(a, 2, 3, stochastic=True, seed=k)))(jnp.asarray(xs), keys)
    loop = [np.asarray(dsquant.fake_quantize(jnp.asarray(x), 2, 3, stochastic=True, seed=k)) for x, k in zip(xs, keys)]
    check_exact(np.asarray(got), np.stack(loop))
    seeds = [int(d[0]) << 32 | int(d[1]) for d in np.asarray(jax.random.key_data(keys))]   # independent of dsquant
    check_exact(np.asarray(got), np.stack([ref.fake_quantize(x, 2, 3, True, True, s) for x, s in zip(xs, seeds)]))


def test_vmap_with_one_seed_and_nested():
    """One seed outside the vmap: every element gets that seed (as the loop would); nested vmaps
    over keys and data in both axes."""
    xs = sample("bfloat16", (3, 2, 64), seed=14)
    one = jax.vmap(jax.vmap(lambda a: dsquant.fake_quantize(a, 4, 4, stochastic=True, seed=9)))(jnp.asarray(xs))
    check_exact(np.asarray(one), np.stack([[ref.fake_quantize(x, 4, 4, True, True, 9) for x in row] for row in xs]))
    keys = jax.random.split(jax.random.key(3), 2)         # batched along the inner axis only
    inner = jax.vmap(jax.vmap(lambda a, k: dsquant.fake_quantize(a, 4, 4, stochastic=True, seed=k)),
                     in_axes=(0, None))(jnp.asarray(xs), keys)
    loop = [[np.asarray(dsquant.fake_quantize(jnp.asarray(x), 4, 4, stochastic=True, seed=k))
             for x, k in zip(row, keys)] for row in xs]
    check_exact(np.asarray(inner), np.array(loop))


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_vmap_quantize_and_dequantize_equal_a_loop(bits):
    xs = sample("float16", (3, 4, 16), seed=15, specials=True)
    q, params = jax.vmap(lambda a: dsquant.quantize(a, 8, bits, symmetric=False))(jnp.asarray(xs))
    assert q.shape == (3, 4, 16 // refi.codes_per_byte(bits)) and params.shape == (3, 8, 2)
    for i, x in enumerate(xs):
        exp_q, exp_params = refi.quantize_ref(x, 8, bits, False)
        check_exact(np.asarray(q[i]).view(np.uint8).reshape(-1), exp_q)
        check_exact(np.asarray(params[i]), exp_params)
    y = jax.vmap(lambda c, p: dsquant.dequantize(c, p, bits, dtype="float16"))(q, params)
    one_params = jax.vmap(lambda c: dsquant.dequantize(c, params[0], bits, dtype="float16"))(q)  # params unbatched
    for i in range(3):
        expected = refi.dequantize_ref(np.asarray(q[i]).view(np.uint8), np.asarray(params[i]), bits, "float16")
        check_exact(np.asarray(y[i]).reshape(-1), expected)
        expected = refi.dequantize_ref(np.asarray(q[i]).view(np.uint8), np.asarray(params[0]), bits, "float16")
        check_exact(np.asarray(one_params[i]).reshape(-1), expected)


def test_vmap_of_grad_with_mask():
    xs = sample("float32", (3, 96), seed=16, specials=True)
    grads = jax.vmap(jax.grad(lambda a: dsj.fake_quantize(a, 4, 3, mask_clipped=True).sum()))(jnp.asarray(xs))
    check_exact(np.asarray(grads), np.stack([ref.ste_mask(x, 4, 3, True).astype(np.float32) for x in xs]))


# ------------------------------------------------------------------------------ errors
def test_errors_name_the_argument():
    x = jnp.ones(64)
    with pytest.raises(ValueError, match="needs seed="):
        fake_jit(x, 4, 4, stochastic=True)
    with pytest.raises(ValueError, match="needs seed="):      # a concrete array closed over, under a trace
        jax.jit(lambda: dsquant.fake_quantize(x, 4, 4, stochastic=True))()
    with pytest.raises(ValueError, match="stochastic=False"):
        jax.jit(lambda a, k: dsquant.fake_quantize(a, 4, 4, seed=k))(x, jax.random.key(0))
    with pytest.raises(TypeError, match="an integer scalar or one JAX PRNG key"):
        two_keys = jax.random.split(jax.random.key(0))
        jax.jit(lambda a, k: dsquant.fake_quantize(a, 4, 4, stochastic=True, seed=k))(x, two_keys)
    with pytest.raises(TypeError, match="x has dtype int32"):
        fake_jit(jnp.ones(64, jnp.int32), 4, 4)
    with pytest.raises(ValueError, match="groups=5 does not divide"):
        fake_jit(x, 5, 4)
    with pytest.raises(ValueError, match="bits must be in 2..16"):
        fake_jit(x, 4, 1)
    with pytest.raises(ValueError, match="packed 2 per byte"):
        jax.jit(lambda a: dsquant.quantize(a, 1, 4))(jnp.ones(7))
    with pytest.raises(TypeError, match="q has dtype float32"):
        dsquant.dequantize(x, jnp.ones((1, 1)), 8)
    with pytest.raises(ValueError, match="params must have shape"):
        dsquant.dequantize(jnp.ones(8, jnp.int8), jnp.ones(2), 8)
    with pytest.raises(BufferError, match="fake_quantize"):
        jax.jit(lambda a: dsquant.ds_quantizer(a))(x)


def test_the_gpu_refusal_says_what_to_do():
    """The handler registered for the CUDA platform (no GPU here: registered for the CPU under a
    test name) fails the call with a message that says what works instead."""
    from dsquant.backends.cpu import host
    capsule = host.xla_gpu_refusals()["dsquant_fake_quantize"]
    jax.ffi.register_ffi_target("dsquant_test_gpu_refusal", capsule, platform="cpu", api_version=1)
    call = jax.ffi.ffi_call("dsquant_test_gpu_refusal", jax.ShapeDtypeStruct((4,), jnp.float32))
    with pytest.raises(jax.errors.JaxRuntimeError, match="runs on the CPU only .* outside jax.jit on GPU arrays"):
        jax.block_until_ready(jax.jit(call)(jnp.ones(4)))


# ------------------------------------------------------------------------------ the documented example
def test_the_documented_jitted_qat_step_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text().split("## JAX:")[1].split("\n## ")[0], re.S)
    assert len(blocks) == 2
    namespace = {}
    exec(compile("\n".join(blocks), str(DOC), "exec"), namespace)     # its asserts: the loss decreases
    losses = namespace["losses"]
    assert losses[-1] < 0.5 * losses[0]
    assert namespace["train_step"]._cache_size() == 1                  # one compilation for every step


# ------------------------------------------------------------------------------ groupings and the result type
import reference_grouping as refg  # noqa: E402


@SCHEMES
def test_jit_quantize_returns_a_quantized_tensor_of_the_grouping(symmetric):
    """quantize's QuantizedTensor is a pytree: a jitted function returns it with its bits, scheme and
    grouping; dequantize(r) outside jit needs nothing else. block_size=64 on [8, 128] is contiguous."""
    x = sample("float32", (8, 128), seed=3)
    r = jax.jit(lambda a: dsquant.quantize(a, bits=4, block_size=64, symmetric=symmetric))(jnp.asarray(x))
    assert isinstance(r, dsquant.QuantizedTensor) and (r.bits, r.symmetric, r.block_size) == (4, symmetric, (1, 64))
    exp_q, exp_params = refg.quantize(x, (1, 64), 4, symmetric)
    check_exact(np.asarray(r.codes).view(np.uint8), exp_q)
    check_exact(np.asarray(r.params), exp_params)
    check_exact(np.asarray(dsquant.dequantize(r)), refg.dequantize(exp_q, exp_params, x.shape, (1, 64), 4, "float32"))


@pytest.mark.parametrize("kw, block", [({"axis": 1}, (16, 1)), ({"block_size": (4, 8)}, (4, 8))], ids=["axis1", "tile"])
def test_jit_fake_quantize_of_a_strided_grouping_is_the_reference(kw, block):
    """Strided groupings run in group order (a transpose inside the jitted function): the NumPy
    path's bits, stochastic rounding included (the counter is the index in group order)."""
    x = sample("float32", (16, 32), seed=4)
    for stochastic, seed in ((False, None), (True, 9)):
        y = jax.jit(lambda a, st=stochastic, sd=seed: dsquant.fake_quantize(a, bits=4, stochastic=st, seed=sd, **kw))(
            jnp.asarray(x))
        expected = dsquant.fake_quantize(x, bits=4, stochastic=stochastic, seed=seed, **kw)   # the NumPy path
        groups = int(np.prod([n // b for n, b in zip(x.shape, block)]))
        check_exact(expected, refg.from_groups(ref.fake_quantize(refg.to_groups(x, block), groups, 4, True,
                                                                 stochastic, seed or 0), x.shape, block))
        check_exact(np.asarray(y), expected)


def test_strided_quantize_of_a_jax_array_is_refused_clearly():
    with pytest.raises(NotImplementedError, match="not contiguous runs"):
        dsquant.quantize(jnp.zeros((16, 32), jnp.float32), axis=1)
