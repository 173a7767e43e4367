"""What strided groupings cost: ``python -m dsquant.bench.grouping [--rows R] [--cols C] [--reps N]``.

A 2-d weight quantized with each grouping form. Strided groupings (``axis=1``, tiles narrower
than the rows) are copied into group order and back (dsquant.core.grouping); each is compared
with the contiguous grouping of the same group size, which the kernels read in place:
``axis=1`` (groups of R elements down the columns) with ``axis=0`` when R == C, tiles of
``b0 x b1`` with ``groups=`` of the same size. ``vs copy``: numpy.copyto of the same bytes / the op.
"""
from __future__ import annotations

import argparse
import os
import platform

import numpy as np

from .. import dequantize, fake_quantize, info, quantize
from .cpu import format_table
from .integer import timed_against_copy


def grouping_rows(rows: int = 4096, cols: int = 4096, reps: int = 7, dtype: str = "float32",
                  bits: int = 4) -> list[dict]:
    """One row per (op, grouping): ms, GB/s, vs copy and the time relative to the contiguous case
    of the same group size (``vs contiguous``: > 1 is slower).

    Example:
        >>> rows = grouping_rows(rows=64, cols=64, reps=1)
        >>> sorted(rows[0])
        ['GB/s', 'group', 'grouping', 'ms', 'op', 'strided', 'vs contiguous', 'vs copy']
    """
    x = np.random.default_rng(0).standard_normal((rows, cols)).astype(dtype)
    tile = (min(128, rows), min(128, cols))
    cases = [   # (name, kwargs, name of the contiguous case of the same group size)
        ("groups=N/128", {"groups": x.size // min(128, cols)}, None),
        ("block_size=128", {"block_size": min(128, cols)}, "groups=N/128"),
        ("axis=0", {"axis": 0}, None),
        ("axis=1", {"axis": 1}, "axis=0" if rows == cols else None),
        (f"groups=N/{tile[0] * tile[1]}", {"groups": x.size // (tile[0] * tile[1])}, None),
        (f"block_size={tile}", {"block_size": tile}, f"groups=N/{tile[0] * tile[1]}"),
    ]
    out = np.empty_like(x)
    table: list[dict] = []
    for op in ("fake_quantize", "quantize", "dequantize"):
        seconds_of: dict[str, float] = {}
        for name, kwargs, contiguous in cases:
            r = quantize(x, bits=bits, **kwargs)
            if op == "fake_quantize":
                fn, moved = (lambda kw=kwargs: fake_quantize(x, bits=bits, out=out, **kw)), 2 * x.nbytes
            elif op == "quantize":
                fn = lambda kw=kwargs: quantize(x, bits=bits, **kw)          # noqa: E731
                moved = x.nbytes + r.codes.nbytes + r.params.nbytes
            else:
                fn, moved = (lambda r=r: dequantize(r, out=out)), x.nbytes + r.codes.nbytes + r.params.nbytes
            seconds, copy = timed_against_copy(fn, moved, reps)
            seconds_of[name] = seconds
            table.append({"op": op, "grouping": name, "group": x.size // r.groups,
                          "strided": r.grouping.strided, "ms": round(seconds * 1e3, 2),
                          "GB/s": round(moved / seconds / 1e9, 2), "vs copy": round(copy / seconds, 2),
                          "vs contiguous": round(seconds / seconds_of[contiguous], 2) if contiguous else ""})
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsquant.bench.grouping", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--bits", type=int, default=4)
    args = parser.parse_args(argv)
    about = info()
    print(f"# dsquant {about['version']} grouping benchmark: [{args.rows}, {args.cols}] {args.dtype}, "
          f"{args.bits} bits, {about['cpu_threads']} threads, {about['cpu_isa']} kernels, "
          f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.2f}; median of {args.reps}")
    print(format_table(grouping_rows(args.rows, args.cols, args.reps, args.dtype, args.bits)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
