"""Peers in ``python -m dsquant bench --peers``: other libraries doing the same work on the same
input in the same run, and the per-call cost of a small call.

A peer is one row of a table (:data:`PEERS`, filled by :func:`peer`): a name and a function that
builds the two callables to time on the given float32 input, dsquant's and the peer's (it imports
the peer's package: when that raises ImportError the row says the package is not installed). Every peer computes
its own per-group statistics (absmax or min/max) in the timed call, as dsquant does, so both
sides do the same work. Other bench modules add rows with the same decorator.
"""
from __future__ import annotations

import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import fake_quantize, quantize
from .timing import median_seconds


@dataclass(frozen=True)
class Peer:
    name: str                 # what the row shows in the "peer" column
    op: str                   # the dsquant op timed against it
    make: Callable[[np.ndarray, int], tuple[Callable[[], Any], Callable[[], Any]]]   # (dsquant, peer)


PEERS: list[Peer] = []


def peer(name: str, op: str):
    """Decorator: register a peer row; the decorated function takes (x: float32 NumPy array,
    group size) and returns (dsquant's callable, the peer's callable)."""
    def register(make):
        PEERS.append(Peer(name, op, make))
        return make
    return register


def numpy_fake_quantize(x: np.ndarray, groups: int, bits: int = 8) -> np.ndarray:
    """Symmetric round-to-nearest fake quantization written the usual vectorised NumPy way."""
    g = x.reshape(groups, -1).astype(np.float32)
    absmax = np.abs(g).max(axis=1, keepdims=True)
    s = (2.0 ** bits / (2 * absmax + 1e-5)).astype(np.float32)
    q = np.clip(np.rint(g * s), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return (q / s).astype(x.dtype).reshape(x.shape)


@peer("NumPy (vectorised)", "fake_quantize")
def _numpy(x, group):
    groups = x.size // group
    return (lambda: fake_quantize(x, groups)), (lambda: numpy_fake_quantize(x, groups))


def _torch_groups(x: np.ndarray, group: int):
    import torch
    return torch, torch.from_numpy(x).view(-1, group)     # the same memory as x


@peer("torch fake_quantize_per_channel_affine", "fake_quantize")
def _torch_fake(x, group):
    torch, t = _torch_groups(x, group)
    zero = torch.zeros(t.shape[0], dtype=torch.int32)

    def run():
        scale = t.abs().amax(dim=1) / 127.5 + 1e-12
        return torch.fake_quantize_per_channel_affine(t, scale, zero, 0, -128, 127)
    return (lambda: fake_quantize(x, x.size // group)), run


@peer("torch quantize_per_channel", "quantize")
def _torch_quantize(x, group):
    torch, t = _torch_groups(x, group)
    zero = torch.zeros(t.shape[0], dtype=torch.int64)

    def run():
        scale = (t.abs().amax(dim=1) / 127.5 + 1e-12).double()
        with warnings.catch_warnings():          # torch deprecates its quantized tensors (2.13)
            warnings.simplefilter("ignore")
            return torch.quantize_per_channel(t, scale, zero, 0, torch.qint8)
    return (lambda: quantize(x, x.size // group)), run


@peer("torchao quantize_affine", "quantize")
def _torchao(x, group):
    torch, t = _torch_groups(x, group)
    with _Quiet():                               # torchao reports the optional kernels it cannot load
        from torchao.quantization.quant_primitives import MappingType, choose_qparams_affine, quantize_affine
    block = (1, group)

    def run():
        scale, zero = choose_qparams_affine(t, MappingType.SYMMETRIC, block, torch.int8)
        return quantize_affine(t, block, scale, zero, torch.int8)
    return (lambda: quantize(x, x.size // group)), run


@peer("bitsandbytes quantize_blockwise (CPU)", "quantize")
def _bitsandbytes(x, group):
    import torch
    with _Quiet():
        import bitsandbytes.functional as bnb
    t = torch.from_numpy(x)
    return (lambda: quantize(x, x.size // group)), (lambda: bnb.quantize_blockwise(t, blocksize=group))


class _Quiet:
    """Silence a library's import-time chatter on stdout/stderr (bitsandbytes prints notices)."""

    def __enter__(self):
        import io
        self.saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = io.StringIO()

    def __exit__(self, *exc):
        sys.stdout, sys.stderr = self.saved


def peer_rows(n: int, reps: int, group_sizes=(128, 4096)) -> list[dict]:
    """dsquant against every installed peer on the same float32 input: median ms of both and
    dsquant's speed-up (peer time / dsquant time). Missing peers give a row saying so."""
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    rows = []
    for p in PEERS:
        for group in group_sizes:
            try:
                ours, theirs = p.make(x, group)
            except ImportError as exc:
                rows.append({"op": p.op, "peer": p.name, "group": group, "dsquant ms": "", "peer ms": "",
                             "speed-up": f"not installed ({exc.name})"})
                continue
            t_ours, t_theirs = median_seconds(ours, reps), median_seconds(theirs, reps)
            rows.append({"op": p.op, "peer": p.name, "group": group, "dsquant ms": t_ours * 1e3,
                         "peer ms": t_theirs * 1e3, "speed-up": t_theirs / t_ours})
    return rows


# ------------------------------------------------------------------------------ per-call cost
@dataclass(frozen=True)
class Call:
    name: str
    make: Callable[[np.ndarray], Callable[[], Any]]


CALLS: list[Call] = []


def call(name: str):
    """Decorator: register a row of the per-call table; the function takes the small float32
    NumPy input and returns the callable to time."""
    def register(make):
        CALLS.append(Call(name, make))
        return make
    return register


@call("dsquant.fake_quantize, NumPy")
def _call_numpy(x):
    return lambda: fake_quantize(x)


@call("dsquant.fake_quantize, NumPy, out=")
def _call_numpy_out(x):
    out = np.empty_like(x)
    return lambda: fake_quantize(x, out=out)


@call("dsquant.fake_quantize, torch")
def _call_torch(x):
    import torch
    t = torch.from_numpy(x.copy())
    return lambda: fake_quantize(t)


@call("torch.fake_quantize_per_tensor_affine")
def _call_torch_peer(x):
    import torch
    t = torch.from_numpy(x.copy())
    return lambda: torch.fake_quantize_per_tensor_affine(t, 0.01, 0, -128, 127)


@call("dsquant.fake_quantize, JAX (eager)")
def _call_jax(x):
    import jax.numpy as jnp
    a = jnp.asarray(x)
    return lambda: fake_quantize(a)


def per_call_rows(n: int = 1024, calls: int = 2000, rounds: int = 15) -> list[dict]:
    """Microseconds per call on a small float32 array (1024 elements = 4 KB): the median (and
    best) over `rounds` rounds of `calls` calls, and the ratio to torch's per-tensor fake quantization."""
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    rows = []
    for c in CALLS:
        try:
            fn = c.make(x)
        except ImportError as exc:
            rows.append({"call": c.name, "median us": "", "best us": "",
                         "vs torch per-tensor": f"not installed ({exc.name})"})
            continue
        for _ in range(calls // 10):
            fn()                              # warm-up
        per = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            per.append((time.perf_counter() - t0) / calls * 1e6)
        rows.append({"call": c.name, "median us": statistics.median(per), "best us": min(per)})
    torch_row = next((r for r in rows if r["call"] == "torch.fake_quantize_per_tensor_affine"
                      and isinstance(r["median us"], float)), None)
    for r in rows:
        if torch_row is not None and isinstance(r["median us"], float):
            r["vs torch per-tensor"] = r["median us"] / torch_row["median us"]
    return rows
