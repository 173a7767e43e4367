"""``python -m dsquant.bench.jax_calls``: the cost of one eager dsquant call on a small JAX array
(CPU), through the cached jitted XLA FFI call that dsquant uses for JAX arrays, beside the DLPack
path that eager JAX calls took before (``dsquant.ops.fake.fake_quantize_array``: export, kernel,
``jax.dlpack.from_dlpack``), the same call on a NumPy array, and two floors: a jitted identity
(JAX's own dispatch cost) and the call inside ``jax.jit`` (per call of a jitted function doing
nothing else).

Each row is the median over repetitions of the mean time of a batch of calls, in microseconds.
The machine is shared: quote ``uptime``'s load beside the numbers.
"""
from __future__ import annotations

import argparse
import os
import statistics
import timeit

import jax
import jax.numpy as jnp
import numpy as np

from .. import dequantize, fake_quantize, quantize
from ..ops import fake, integer


def per_call_us(fn, number: int, repeat: int) -> float:
    fn()
    jax.block_until_ready(fn())
    return statistics.median(timeit.repeat(lambda: jax.block_until_ready(fn()), number=number, repeat=repeat)) \
        / number * 1e6


def rows(n: int, number: int, repeat: int) -> list[tuple[str, float]]:
    x_np = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    x = jnp.asarray(x_np)
    q, params = quantize(x, 8, 8)
    identity = jax.jit(lambda a: a)
    jitted = jax.jit(lambda a: fake_quantize(a, 8, 8))
    cases = [
        ("jax.jit(lambda a: a)(x)  [JAX dispatch floor]", lambda: identity(x)),
        ("fake_quantize(x)  numpy", lambda: fake_quantize(x_np, 8, 8)),
        ("fake_quantize(x)  jax, DLPack path (before)", lambda: fake.fake_quantize_array(x, 8, 8, True, False)),
        ("fake_quantize(x)  jax, jitted FFI (now)", lambda: fake_quantize(x, 8, 8)),
        ("fake_quantize(x, stochastic, seed)  jax, DLPack (before)",
         lambda: fake.fake_quantize_array(x, 8, 8, True, True, 1)),
        ("fake_quantize(x, stochastic, seed)  jax, jitted FFI (now)",
         lambda: fake_quantize(x, 8, 8, stochastic=True, seed=1)),
        ("jax.jit(fake_quantize)(x)  (inside jit)", lambda: jitted(x)),
        ("quantize(x)  jax, DLPack (before)", lambda: integer.quantize_array(x, 8, 8, True)),
        ("quantize(x)  jax, jitted FFI (now)", lambda: quantize(x, 8, 8)),
        ("dequantize(q, params)  jax, DLPack (before)", lambda: integer.dequantize_array(q, params, 8)),
        ("dequantize(q, params)  jax, jitted FFI (now)", lambda: dequantize(q, params, 8)),
    ]
    return [(name, per_call_us(fn, number, repeat)) for name, fn in cases]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsquant.bench.jax_calls", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1024, help="float32 elements (default 1024: 4 KB)")
    parser.add_argument("--number", type=int, default=2000, help="calls per timing")
    parser.add_argument("--repeat", type=int, default=9, help="timings (the median is reported)")
    args = parser.parse_args(argv)
    print(f"float32[{args.n}] ({4 * args.n} bytes), 8 groups, 8 bits; load average {os.getloadavg()[0]:.2f}; "
          f"jax {jax.__version__}")
    print("| call | µs |\n|---|---|")
    for name, us in rows(args.n, args.number, args.repeat):
        print(f"| {name} | {us:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
