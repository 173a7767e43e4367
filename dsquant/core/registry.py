"""Which implementation runs an operation on a device: a table (op, device) -> function.

Operations are declared by the modules of ``dsquant.ops`` (their arguments, checks and output
shapes); backends (``dsquant.backends.cpu.host``, ``dsquant.backends.cuda.device``) register what they
implement with :func:`implements`. A backend module is imported the first time an operation
needs its device, so the CUDA backend (and CuPy) is imported only for GPU arrays.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

# The module that registers each device's implementations when imported.
# "torch.library": dsquant's torch custom ops, which record calls in torch's graphs (autograd,
# torch.compile) and run the "cpu"/"cuda" implementations; imported for torch tensors that need them.
# "jax.ffi": dsquant's XLA FFI calls (jax.jit, jax.grad, jax.vmap; eager JAX arrays on the CPU too).
BACKENDS = {"cpu": "dsquant.backends.cpu.host", "cuda": "dsquant.backends.cuda.device",
            "torch.library": "dsquant.torch", "jax.ffi": "dsquant.jax"}

_TABLE: dict[tuple[str, str], Callable[..., Any]] = {}


def implements(op: str, device: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register the decorated function as `op`'s implementation on `device`."""
    if device not in BACKENDS:
        raise ValueError(f"unknown device {device!r}; devices: {', '.join(BACKENDS)}")

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        key = (op, device)
        old = _TABLE.get(key)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"{op} already has an implementation on {device} ({old.__module__}.{old.__qualname__})")
        _TABLE[key] = fn              # a re-import of the same backend module replaces its functions
        return fn
    return register


def lookup(op: str, device: str) -> Callable[..., Any]:
    """`op`'s implementation on `device`; NotImplementedError listing where `op` is available."""
    module = BACKENDS.get(device)
    if module is not None and (module not in sys.modules or (op, device) not in _TABLE):
        # its @implements decorators fill _TABLE; an import in progress in another thread is waited for
        importlib.import_module(module)
    fn = _TABLE.get((op, device))
    if fn is None:
        where = sorted(d for (o, d) in _TABLE if o == op)
        raise NotImplementedError(f"{op} is not implemented for arrays on {device}; it runs on "
                                  f"{', '.join(where) or 'no device yet'}")
    return fn

