"""dsquant's operations as XLA FFI calls: ``jax.jit``, ``jax.grad`` and ``jax.vmap`` (CPU).

Importing this module imports jax and registers dsquant's XLA FFI handlers (the CPU kernels of
the NumPy path, compiled against XLA's FFI C API: dsquant/backends/cpu/xla_ffi.hpp) with
``jax.ffi.register_ffi_target``. You rarely need to import it yourself: ``import dsquant`` still
imports no framework, and :func:`dsquant.fake_quantize`, :func:`dsquant.quantize` and
:func:`dsquant.dequantize` come here the first time they meet a JAX array on the CPU (traced
or not: an eager call runs the same FFI call through a cached ``jax.jit``, which is cheaper than
exporting the array through DLPack). Results are bit-identical to the NumPy path's.

* ``fake_quantize``: the straight-through estimator of :mod:`dsquant.ops.ste` (the torch path's
  rule), as a ``jax.custom_jvp``: forward and reverse mode. ``mask_clipped=True`` computes the mask
  with that module's definition on the host (``jax.pure_callback``, NumPy).
* ``quantize`` / ``dequantize``: no gradient (their inputs pass ``jax.lax.stop_gradient``).
* Stochastic rounding needs an explicit ``seed`` under a JAX transformation (a traced function
  runs once, so it cannot draw from dsquant's global stream): an int, or a JAX PRNG key
  (``jax.random.key(k)`` or the raw ``uint32[2]`` of ``jax.random.PRNGKey(k)``), which is what jitted
  JAX code passes around and splits per step, or a traced integer scalar (its value modulo 2**32;
  2**64 for a 64-bit integer). A key holding ``[hi, lo]`` means the seed
  ``hi * 2**32 + lo``, so ``seed=jax.random.key(5)`` gives the bits of ``seed=5``. Eager calls
  without a seed draw from the global stream, as for NumPy.
* ``jax.vmap`` (``vmap_method="broadcast_all"``): each batch element is one call, with that call's
  groups; the result equals a Python loop over the batch, stochastic rounding included (a batch
  of keys gives each element its own key; one seed for the whole batch gives every element that
  seed, as the loop would).
* GPU: under ``jax.jit`` dsquant runs on the CPU only; a jitted call on a GPU raises (at run time,
  from a handler registered for the CUDA platform) with a message saying so. Eager calls on GPU
  arrays use the CUDA backend through DLPack.

Example:
    >>> import jax, jax.numpy as jnp, dsquant
    >>> w = jnp.array([0.1, -0.5, 0.25, 1.0], dtype=jnp.float16)
    >>> jax.jit(lambda w: dsquant.fake_quantize(w, bits=4))(w)
    Array([ 0.125, -0.5  ,  0.25 ,  0.875], dtype=float16)
    >>> jax.grad(lambda w: dsquant.fake_quantize(w, bits=4).sum())(w)
    Array([1., 1., 1., 1.], dtype=float16)
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .core import checks, dtypes, formats, registry, rng
from .core.grouping import Grouping
from .interop.adapters import JAX_FFI
from .ops import ste
from .ops.quantized import QuantizedTensor

# dtype objects, not names: a NumPy dtype's .name costs microseconds (eager calls are that cheap)
_FLOATS = frozenset(jnp.dtype(name) for name in dtypes.NAMES)
_CODES = frozenset(jnp.dtype(name) for name in formats.CODE_DTYPES)
_PARAMS = jnp.dtype(formats.PARAMS_DTYPE)
_MASK32 = (1 << 32) - 1
_VMAP = "broadcast_all"       # see the module docstring; xla_ffi.hpp reads the batch from the shapes


# XLA's FFI from Python: jax.ffi (jax >= 0.5), jax.extend.ffi before (the same functions: 0.4.38 has
# ffi_call with vmap_method and register_ffi_target)
try:
    _ffi: Any = jax.ffi
except AttributeError:
    import jax.extend.ffi
    _ffi = jax.extend.ffi


def _register() -> None:
    for name, capsule in registry.lookup("xla_handlers", "cpu")().items():
        _ffi.register_ffi_target(name, capsule, platform="cpu", api_version=1)
    for name, capsule in registry.lookup("xla_gpu_refusals", "cpu")().items():
        _ffi.register_ffi_target(name, capsule, platform="CUDA", api_version=1)


_register()


# quantize's result is a QuantizedTensor (a tuple that remembers bits, scheme, grouping, dtype): a
# pytree node, so jitted and vmapped functions can return it (the codes and params are its leaves).
def _flatten_quantized(r: QuantizedTensor[Any, Any]) -> tuple[tuple[Any, Any], tuple[Any, ...]]:
    return (r.codes, r.params), (r.bits, r.symmetric, r.grouping, r.dtype)


def _unflatten_quantized(aux: tuple[Any, ...], leaves: tuple[Any, Any]) -> QuantizedTensor[Any, Any]:
    bits, symmetric, grouping, dtype = aux
    return QuantizedTensor(leaves[0], leaves[1], bits, symmetric, grouping, dtype)


jax.tree_util.register_pytree_node(QuantizedTensor, _flatten_quantized, _unflatten_quantized)

# Whether no JAX trace is active (a private function of jax, hence the fallback): a seedless
# stochastic call on a concrete array closed over by a jitted function would otherwise draw its
# random words once, at trace time, and bake them into the compiled function.
try:
    from jax._src.core import trace_state_clean as _trace_state_clean
except ImportError:                   # a jax without it: only traced arguments are recognised
    _trace_state_clean = None


def _tracing(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer) or (_trace_state_clean is not None and not _trace_state_clean())


def _threads() -> int:
    threads: int = registry.lookup("num_threads", "cpu")()
    return threads


# ------------------------------------------------------------------------------ fake_quantize
class _Fake(NamedTuple):
    """The static arguments of one fake_quantize call (numel: of one unbatched call)."""
    groups: int
    numel: int
    bits: int
    symmetric: bool
    stochastic: bool
    mask_clipped: bool
    threads: int


def _fake_call(x: Any, words: Any, cfg: _Fake) -> Any:
    return _ffi.ffi_call("dsquant_fake_quantize", jax.ShapeDtypeStruct(x.shape, x.dtype), vmap_method=_VMAP)(
        x, words, groups=np.int64(cfg.groups), numel=np.int64(cfg.numel), bits=np.int64(cfg.bits),
        symmetric=np.int64(cfg.symmetric), stochastic=np.int64(cfg.stochastic), threads=np.int64(cfg.threads))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _fake_ste(x: Any, words: Any, cfg: _Fake) -> Any:
    return _fake_call(x, words, cfg)


def _fake_ste_jvp(cfg: _Fake, primals: tuple[Any, Any], tangents: tuple[Any, Any]) -> tuple[Any, Any]:
    x, words = primals
    dx = tangents[0]
    if cfg.mask_clipped:
        dx = jnp.where(_in_range(x, cfg), dx, jnp.zeros_like(dx))
    return _fake_call(x, words, cfg), dx


_fake_ste.defjvp(_fake_ste_jvp)


def _in_range(x: Any, cfg: _Fake) -> Any:
    """ste.in_range on the host (NumPy: its float64 steps exist whether or not JAX enables x64)."""
    def host(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values)
        groups = values.size // (cfg.numel // cfg.groups)     # a batch of calls: their groups in a row
        with np.errstate(all="ignore"):                        # inf - inf etc. in non-finite elements
            return np.asarray(ste.in_range(np, values, groups, cfg.bits, cfg.symmetric))
    return jax.pure_callback(host, jax.ShapeDtypeStruct(x.shape, jnp.bool_), x, vmap_method=_VMAP)


@functools.lru_cache(maxsize=256)
def _jitted_fake(cfg: _Fake) -> Callable[[Any, Any], Any]:
    def run(x: Any, words: Any) -> Any:
        if words is None:                          # nearest rounding: no random words
            words = jnp.zeros(4, jnp.uint32)
        return _fake_ste(x, words, cfg)
    jitted: Callable[[Any, Any], Any] = jax.jit(run)
    return jitted


def _key_words(key: Any) -> Any:
    """uint32[4] (seed lo, seed hi, offset 0, 0) of a JAX seed: a PRNG key (typed, or the raw
    uint32[2] [hi, lo]), or an integer scalar (a traced int: its value modulo 2**32, or 2**64 for a
    64-bit dtype)."""
    zero = jnp.zeros((), jnp.uint32)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    elif key.shape == () and jnp.issubdtype(key.dtype, jnp.integer):
        lo = key.astype(jnp.uint32)
        hi = (key >> 32).astype(jnp.uint32) if key.dtype.itemsize == 8 else zero
        return jnp.stack([lo, hi, zero, zero])
    if key.dtype != jnp.uint32 or key.shape != (2,):
        raise TypeError(f"seed must be an int, an integer scalar or one JAX PRNG key (jax.random.key(k), or the "
                        f"uint32[2] of jax.random.PRNGKey(k)); got an array of dtype {key.dtype} and shape "
                        f"{key.shape} (for a batch of keys, jax.vmap over them)")
    return jnp.stack([key[1], key[0], zero, zero])


def _words(seed: Any, offset: int) -> np.ndarray:
    return np.array([seed & _MASK32, seed >> 32, offset & _MASK32, offset >> 32], np.uint32)


def _check_float(x: Any, name: str = "x") -> None:
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name} has dtype {x.dtype.name}; dsquant quantizes {', '.join(dtypes.NAMES)}")


def fake_quantize(x: Any, groups: int = 1, bits: int = 8, *, symmetric: bool = True, stochastic: bool = False,
                  seed: Any = None, mask_clipped: bool = False) -> Any:
    """:func:`dsquant.fake_quantize` of a JAX array as an XLA FFI call, with the straight-through
    gradient of :mod:`dsquant.ops.ste` (`mask_clipped`: zero gradient for clipped elements).

    `seed`: None (eager calls only: dsquant's global stream), an int in ``[0, 2**64)``, or a JAX
    PRNG key (one key; traced keys work under ``jax.jit``). Only with ``stochastic=True``.
    """
    return _fake_quantize(x, groups, checks.bits(bits), checks.bool_arg(symmetric, "symmetric"),
                          checks.bool_arg(stochastic, "stochastic"), seed,
                          checks.bool_arg(mask_clipped, "mask_clipped"))


def _fake_quantize(x: Any, groups: int, bits: int, symmetric: bool, stochastic: bool, seed: Any,
                   mask_clipped: bool) -> Any:
    _check_float(x)
    n = int(x.size)
    groups = checks.groups(groups, n)
    words: Any = None
    if seed is not None and isinstance(seed, jax.Array):
        if not stochastic:
            raise ValueError("a seed is given but stochastic=False: a seed only affects stochastic rounding; "
                             "pass stochastic=True, or seed=None")
        words = _key_words(seed)
    elif seed is None and stochastic and _tracing(x):
        raise ValueError("stochastic rounding under a JAX transformation (jit, grad, vmap) needs seed=: an int "
                         "or a jax.random key (a traced call runs once, so it cannot draw from dsquant's "
                         "global stream)")
    elif stochastic:
        words = _words(*rng.resolve(seed, n, stochastic))
    else:
        rng.resolve(seed, n, stochastic)                   # refuses a seed without stochastic rounding
    cfg = _Fake(groups, n, bits, symmetric, stochastic, mask_clipped, _threads())
    return _jitted_fake(cfg)(x, words)


# ------------------------------------------------------------------------------ quantize / dequantize
@functools.lru_cache(maxsize=256)
def _jitted_quantize(groups: int, bits: int, symmetric: bool, threads: int) -> Callable[[Any], Any]:
    def run(x: Any) -> Any:
        q = jax.ShapeDtypeStruct(formats.code_shape(tuple(x.shape), bits), jnp.int8)
        params = jax.ShapeDtypeStruct(formats.params_shape(groups, symmetric), jnp.float32)
        return tuple(_ffi.ffi_call("dsquant_quantize", (q, params), vmap_method=_VMAP)(
            jax.lax.stop_gradient(x), bits=np.int64(bits), threads=np.int64(threads)))
    jitted: Callable[[Any], Any] = jax.jit(run)
    return jitted


def quantize(x: Any, groups: int = 1, bits: int = 8, *, symmetric: bool = True) -> tuple[Any, Any]:
    """:func:`dsquant.quantize` of a JAX array as an XLA FFI call (no gradient)."""
    bits = checks.bits(bits, formats.INT_BITS)
    symmetric = checks.bool_arg(symmetric, "symmetric")
    _check_float(x)
    groups = checks.groups(groups, int(x.size))
    formats.code_shape(tuple(x.shape), bits)               # the packing error, before tracing
    result: tuple[Any, Any] = _jitted_quantize(groups, bits, symmetric, _threads())(x)
    return result


@functools.lru_cache(maxsize=256)
def _jitted_dequantize(bits: int, dtype: str, threads: int) -> Callable[[Any, Any], Any]:
    def run(q: Any, params: Any) -> Any:
        y = jax.ShapeDtypeStruct(formats.value_shape(tuple(q.shape), bits), jnp.dtype(dtype))
        return _ffi.ffi_call("dsquant_dequantize", y, vmap_method=_VMAP)(
            q, jax.lax.stop_gradient(params), bits=np.int64(bits), threads=np.int64(threads))
    jitted: Callable[[Any, Any], Any] = jax.jit(run)
    return jitted


def dequantize(q: Any, params: Any, bits: int = 8, *, dtype: Any = None) -> Any:
    """:func:`dsquant.dequantize` of JAX arrays as an XLA FFI call (no gradient). `params` may be a
    JAX or NumPy array (a constant under jit)."""
    bits = checks.bits(bits, formats.INT_BITS)
    name = "float32" if dtype is None else dtypes.parse(dtype).name
    if q.dtype not in _CODES:
        raise TypeError(f"q has dtype {q.dtype.name}; expected {' or '.join(formats.CODE_DTYPES)}")
    if not isinstance(params, (jax.Array, np.ndarray)):
        raise TypeError(f"params must be a JAX (or NumPy) array, got {type(params).__qualname__}")
    if params.dtype != _PARAMS:
        raise TypeError(f"params has dtype {params.dtype}; expected {formats.PARAMS_DTYPE}")
    if len(params.shape) != 2 or params.shape[1] not in (1, 2):
        raise ValueError(f"params must have shape [groups, 1] (symmetric) or [groups, 2] (asymmetric), "
                         f"got {tuple(params.shape)}")
    shape = formats.value_shape(tuple(q.shape), bits)
    checks.groups(params.shape[0], int(np.prod(shape, dtype=np.int64)), name="params.shape[0] (the group count)")
    return _jitted_dequantize(bits, name, _threads())(q, params)


# What the front end (dsquant.fake_quantize, ...) calls for JAX arrays: its arguments, already
# checked where the front end checks them.
# The front end hands over its Grouping (dsquant.core.grouping). The kernels know contiguous runs
# in C order only; a strided grouping's fake quantization runs on the elements in group order
# (a transpose XLA fuses, differentiable) and comes back the same way.
def _split(g: Grouping) -> tuple[list[int], list[int]]:
    """(the shape that splits every axis into (blocks, within a block), the permutation to group order)."""
    assert g.block_size is not None
    split = [d for n, b in zip(g.shape, g.block_size) for d in (n // b, b)]
    return split, list(range(0, len(split), 2)) + list(range(1, len(split), 2))


def _to_group_order(x: Any, g: Grouping) -> Any:
    split, perm = _split(g)
    return jnp.transpose(jnp.reshape(x, split), perm).reshape(-1)


def _from_group_order(y: Any, g: Grouping) -> Any:
    split, perm = _split(g)
    inverse = [perm.index(i) for i in range(len(perm))]
    return jnp.transpose(jnp.reshape(y, [split[i] for i in perm]), inverse).reshape(g.shape)


def _contiguous(g: Grouping, op: str) -> int:
    if g.strided:
        raise NotImplementedError(f"{op} of a JAX array with {g}, whose groups are not contiguous runs in C order, "
                                  f"is not supported yet (fake_quantize is); transpose so that the groups are "
                                  f"contiguous, or use NumPy / torch arrays")
    return max(g.groups, 1)


@registry.implements("fake_quantize", JAX_FFI)
def _front_fake_quantize(x: Any, g: Grouping, bits: int, symmetric: bool, stochastic: bool, seed: Any) -> Any:
    if not g.strided or not x.size:
        return _fake_quantize(x, max(g.groups, 1), bits, symmetric, stochastic, seed, False)
    y = _fake_quantize(_to_group_order(x, g), g.groups, bits, symmetric, stochastic, seed, False)
    return _from_group_order(y, g)


@registry.implements("quantize", JAX_FFI)
def _front_quantize(x: Any, g: Grouping, bits: int, symmetric: bool) -> tuple[Any, Any]:
    q, params = quantize(x, _contiguous(g, "quantize"), bits, symmetric=symmetric)
    return q, params.reshape(g.params_shape(symmetric))


@registry.implements("dequantize", JAX_FFI)
def _front_dequantize(q: Any, params: Any, bits: int, dtype: Any, g: Grouping) -> Any:
    groups = _contiguous(g, "dequantize")
    return dequantize(q, params.reshape(groups, params.shape[-1]), bits, dtype=dtype)


@registry.implements("ds_quantizer", JAX_FFI)
def _front_ds_quantizer(x: Any, groups: int, bits: int, sr: bool, asym: bool) -> None:
    raise BufferError("ds_quantizer quantizes in place, but JAX arrays are immutable; use "
                      "dsquant.fake_quantize(x, ...), which returns a new array")
