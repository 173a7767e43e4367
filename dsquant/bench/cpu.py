"""``python -m dsquant bench``: CPU throughput of fake quantization, integer quantize / dequantize
and the ZeRO++ ops, as GB/s, as a ratio to ``numpy.copyto`` of the same bytes measured in the same
run, and (fake quantization) as a speed-up over a vectorised NumPy implementation of the same
operation; each row beside its target (issue 12). ``--peers`` adds other libraries on the same
input (dsquant.bench.peers) and the per-call cost of a 4 KB call; ``--json PATH`` writes every
table, the machine and its load as JSON, so runs can be compared.

Times are medians over repetitions; run on an otherwise idle machine and compare ratios, not
absolute times. ``--quick`` runs small arrays and few repetitions (seconds; a smoke test, not a
measurement).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
from collections.abc import Callable

import numpy as np

from .. import fake_quantize, info
from .timing import median_seconds

GROUP_SIZES = {"128": 128, "4096": 4096, "all": None}


def numpy_fake_quantize(x: np.ndarray, groups: int, bits: int, stochastic: bool, rng) -> np.ndarray:
    """The same symmetric fake quantization written the usual vectorised NumPy way (in float32)."""
    g = x.reshape(groups, -1).astype(np.float32)
    absmax = np.abs(g).max(axis=1, keepdims=True)
    s = (2.0 ** bits / (2 * absmax + 1e-5)).astype(np.float32)
    v = g * s
    q = np.floor(v + rng.random(v.shape, dtype=np.float32)) if stochastic else np.rint(v)
    q = np.clip(q, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return (q / s).astype(x.dtype).reshape(x.shape)


def _fake_dtypes() -> list:
    """float32, float16 and, with ml_dtypes installed, bfloat16."""
    dtypes = [np.dtype(np.float32), np.dtype(np.float16)]
    if importlib.util.find_spec("ml_dtypes") is not None:
        import ml_dtypes
        dtypes.append(np.dtype(ml_dtypes.bfloat16))
    return dtypes


# Asymmetric rows (nearest, 8 bits): the dtypes and group sizes whose "vs sym" is measured.
ASYMMETRIC = {"float32": ("128", "4096"), "float16": ("128", "4096")}


def fake_rows(n: int, reps: int, numpy_reps: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for dtype in _fake_dtypes():
        x = rng.standard_normal(n).astype(np.float32).astype(dtype)
        out = np.empty_like(x)
        copy_s = median_seconds(lambda: np.copyto(out, x), reps)
        moved = 2 * x.nbytes
        for group_name, size in GROUP_SIZES.items():
            groups = 1 if size is None else n // size
            cases = [("symmetric", "nearest"), ("symmetric", "stochastic")]
            if group_name in ASYMMETRIC.get(dtype.name, ()):
                cases.append(("asymmetric", "nearest"))
            for scheme, rounding in cases:
                sr, sym = rounding == "stochastic", scheme == "symmetric"
                kw = dict(symmetric=sym, stochastic=sr, seed=1 if sr else None)
                t = median_seconds(lambda: fake_quantize(x, groups, 8, out=out, **kw), reps)
                t_new = median_seconds(lambda: fake_quantize(x, groups, 8, **kw), reps)
                row = {"op": "fake_quantize", "dtype": dtype.name, "bits": 8, "scheme": scheme, "group": group_name,
                       "rounding": rounding, "ms": t * 1e3, "GB/s": moved / t / 1e9, "vs copy": copy_s / t,
                       "new/out": t / t_new}
                if sym:
                    t_np = median_seconds(lambda: numpy_fake_quantize(x, groups, 8, sr, rng), numpy_reps)
                    row["vs NumPy"] = t_np / t
                else:   # against the symmetric nearest row of the same dtype and group, timed again beside it
                    t_sym = median_seconds(lambda: fake_quantize(x, groups, 8, out=out), reps)
                    row["vs sym"] = t_sym / t
                rows.append(row)
    return rows


def extra_rows(n: int, reps: int) -> list[dict]:
    """Rows of the other op families' benchmark modules."""
    from . import integer, zeropp
    return integer.int_rows(n, reps) + zeropp.zeropp_rows(n, reps)


def _fake_section(n: int, reps: int, numpy_reps: int) -> list[dict]:
    return fake_rows(n, reps, numpy_reps)


def _extra_section(n: int, reps: int, numpy_reps: int) -> list[dict]:
    return extra_rows(n, reps)


def _fp_section(n: int, reps: int, numpy_reps: int) -> list[dict]:
    from .fp import fp_rows
    return fp_rows(n, reps)


# The tables of `bench`, in order: (title, function of (elements, repetitions, NumPy repetitions)
# returning rows: dicts, the union of whose keys are the columns). Another op family's bench
# module adds its table by appending here (or calling section()).
SECTIONS: list[tuple[str, Callable[[int, int, int], list[dict]]]] = [
    ("fake quantization (fake_quantize into a preallocated out)", _fake_section),
    ("integer codes (quantize, dequantize) and the ZeRO++ ops (2 nodes x 4 devices)", _extra_section),
    ("minifloat codes (fp_quantize, fp_dequantize; peers: casts without scaling or packing)", _fp_section),
]


def section(title: str):
    """Decorator: add a table to `bench` (see SECTIONS)."""
    def register(fn):
        SECTIONS.append((title, fn))
        return fn
    return register


# Issue 12's targets at 2^24 elements, as a ratio to a single-thread numpy.copyto of the same
# bytes: (what a row must match, the least value wanted, of which column), first match wins.
TARGETS = [
    ({"op": "fake_quantize", "rounding": "stochastic"}, 0.7, "vs copy"),
    ({"op": "fake_quantize", "scheme": "asymmetric"}, 0.9, "vs sym"),   # of the symmetric row's speed
    ({"op": "fake_quantize", "dtype": "float32"}, 1.0, "vs copy"),
    ({"op": "fake_quantize"}, 0.9, "vs copy"),                 # float16 / bfloat16 nearest
    ({"op": "quantize"}, 0.8, "vs copy"),
    ({"op": "dequantize"}, 0.8, "vs copy"),
    ({"op": "swizzle_quantize"}, 0.7, "vs copy"),
    ({"op": "loco_swizzle_quantize"}, 0.7, "vs copy"),
    ({"op": "quantized_reduction"}, 0.5, "vs copy"),
    # issue 11: FP8 absmax quantization with groups of 128
    ({"op": "fp_quantize", "fmt": "e4m3", "scaling": "absmax", "group": 128, "rounding": "nearest"}, 0.6, "vs copy"),
    ({"op": "fp_quantize", "fmt": "e5m2", "scaling": "absmax", "group": 128, "rounding": "nearest"}, 0.6, "vs copy"),
]


def with_targets(rows: list[dict]) -> list[dict]:
    """Each row with its "target" (the least value of a column wanted) and whether it is met."""
    for row in rows:
        found = next(((t, col) for match, t, col in TARGETS if all(row.get(k) == v for k, v in match.items())), None)
        if found is not None and isinstance(row.get(found[1]), float):
            target, col = found
            shown = "" if col == "vs copy" else f" {col}"
            row["target"] = f">= {target:.1f}{shown} {'met' if row[col] >= target else 'MISSED'}"
    return rows


def format_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    def cell(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


LEGEND = ("# GB/s: bytes the op reads + writes per second (1e9). vs copy: time of numpy.copyto moving the "
          "same bytes / the op's time (1.00 = as fast as a memory copy). new/out: time with out= / time of the same "
          "call making its result (1.00 = allocating costs nothing). vs NumPy: time of a vectorised NumPy "
          "implementation of the same op / the op's time. vs sym: time of the symmetric row (same dtype, group) / "
          "the asymmetric row's time. group: elements per group (all: one group). target: "
          "issue 12's (FP8: issue 11's) least vs copy (asymmetric: vs sym) at 2^24 elements.")
PEERS_LEGEND = ("# dsquant and each peer on the same float32 input, each computing its own per-group scales; "
                "speed-up: the peer's median time / dsquant's (dsquant makes a new result, like the peers).")
CALLS_LEGEND = ("# microseconds per call on 1024 float32 elements (4 KB), median (and best) of 15 rounds of 2000 "
                "calls; "
                "vs torch per-tensor: / torch.fake_quantize_per_tensor_affine's median (below 1 = cheaper). "
                "Targets: NumPy <= 8 us and below torch's, torch <= 10 us, JAX <= 20 us.")


def machine() -> dict:
    """What the tables were measured on: CPU model, cores, load average, date."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    about = info()
    return {"cpu": model, "cores": os.cpu_count(), "threads": about["cpu_threads"], "isa": about["cpu_isa"],
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "dsquant": about["version"], "numpy": np.__version__, "python": platform.python_version()}


def _jsonable(rows: list[dict]) -> list[dict]:
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in rows]


def main(argv=None, prog: str = "python -m dsquant bench") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--log2-size", type=int, default=None, help="elements per array, as a power of two "
                        "(24; 16 with --quick)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per row, median reported "
                        "(7; 2 with --quick)")
    parser.add_argument("--numpy-reps", type=int, default=None, help="repetitions for the NumPy baseline "
                        "(3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small arrays, few repetitions: a few seconds, "
                        "to see that everything runs (the numbers mean little)")
    parser.add_argument("--peers", action="store_true", help="also time NumPy, torch, torchao and bitsandbytes "
                        "on the same inputs (those installed) and the per-call cost of a 4 KB call")
    parser.add_argument("--only-peers", action="store_true", help="only the peer and per-call tables")
    parser.add_argument("--json", metavar="PATH", help="also write every table, the machine and its load to PATH "
                        "as JSON ('-': to stdout instead of the tables)")
    args = parser.parse_args(argv)
    quick = args.quick
    log2_size = args.log2_size if args.log2_size is not None else (16 if quick else 24)
    reps = args.reps if args.reps is not None else (2 if quick else 7)
    numpy_reps = args.numpy_reps if args.numpy_reps is not None else (1 if quick else 3)
    n = 1 << log2_size
    quiet = args.json == "-"
    say = (lambda *a: None) if quiet else print
    about = machine()
    say(f"# dsquant {about['dsquant']} CPU benchmark{' (--quick)' if quick else ''}: {n} elements "
        f"(2^{log2_size}), {about['threads']} threads, {about['isa']} kernels, {about['cpu']} "
        f"({about['cores']} cores), "
        f"NumPy {about['numpy']}; median of {reps} repetitions; {about['date']}, load average "
        + " ".join(f"{v:.2f}" for v in about["load_average"] or ()))
    report: dict = {"machine": about, "elements": n, "reps": reps, "tables": {}}
    if not args.only_peers:
        say(LEGEND)
        for title, rows_of in SECTIONS:
            rows = with_targets(rows_of(n, reps, numpy_reps))
            if rows:
                say(f"\n## {title}\n")
                say(format_table(rows))
                report["tables"][title] = _jsonable(rows)
    if args.peers or args.only_peers:
        from . import peers
        rows = peers.peer_rows(n, reps)
        say("\n## peers (new results)\n")
        say(PEERS_LEGEND)
        say(format_table(rows))
        report["tables"]["peers"] = _jsonable(rows)
        rows = peers.per_call_rows(calls=200 if quick else 2000, rounds=3 if quick else 15)
        say("\n## per-call cost (4 KB float32 fake_quantize)\n")
        say(CALLS_LEGEND)
        say(format_table(rows))
        report["tables"]["per call"] = _jsonable(rows)
    report["machine"]["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if args.json == "-":
        print(json.dumps(report, indent=1))
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0
