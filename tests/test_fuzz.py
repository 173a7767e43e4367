"""Random valid and invalid calls of every public op (issue 13), in a child process.

Each case is drawn from ``numpy.random.default_rng([seed, index])``: an op (the functional API,
``ds_quantizer``, the ZeRO++ ops, their LoCo variants and ``dsquant.compat.deepspeed``'s names), a
framework (NumPy, torch CPU, JAX CPU), a dtype, a layout (contiguous, strided, transposed, 0-d,
empty), values with specials (±0, subnormals, ±max, NaN, ±Inf), and either valid arguments, checked
bit for bit against the tests' references, or one invalid argument, checked for the documented
error type. The cases run in a child process, so a crash is caught; the case that was running is
printed with the command that replays it alone.

``DSQUANT_FUZZ_CALLS`` (default 3000) sets the number of calls, ``DSQUANT_FUZZ_SEED`` (default 0)
the stream of cases, ``DSQUANT_FUZZ_FRAMEWORKS`` (default ``numpy,torch,jax``) the frameworks.
Replay one case: ``python tests/test_fuzz.py SEED INDEX``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CALLS = int(os.environ.get("DSQUANT_FUZZ_CALLS", "3000"))
SEED = int(os.environ.get("DSQUANT_FUZZ_SEED", "0"))
# scripts/sanitize.sh leaves JAX out (jaxlib aborts under a preloaded ASan runtime)
FRAMEWORKS = tuple(os.environ.get("DSQUANT_FUZZ_FRAMEWORKS", "numpy,torch,jax").split(","))

DTYPES = ("float16", "bfloat16", "float32", "float64")
OPS = ("fake_quantize", "ds_quantizer", "quantize", "dequantize", "swizzle_quantize", "quantized_reduction",
       "loco_swizzle_quantize", "loco_quantized_reduction", "compat.ds_quantize", "compat.quantize",
       "compat.dequantize")


# ------------------------------------------------------------------------------ drawing a case
def _values(rng, dtype, n):
    import ml_dtypes
    dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    top = float(np.finfo(dt).max)
    x = rng.standard_normal(n) * np.exp(rng.uniform(-8, 8, n))
    if rng.random() < 0.5:
        specials = np.array([0.0, -0.0, float(np.finfo(dt).smallest_subnormal), top, -top, top / 3,
                             np.nan, np.inf, -np.inf])
        pick = rng.random(n) < 0.2
        x[pick] = rng.choice(specials, int(pick.sum()))
    with np.errstate(over="ignore"):
        return np.clip(x, -np.inf, np.inf).astype(dt)


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0] or [1]


def draw(seed, index):
    """The case (a dict of plain values) number `index` of stream `seed`."""
    rng = np.random.default_rng([seed, index])
    op = OPS[rng.integers(len(OPS))]
    case = {"seed": seed, "index": index, "op": op, "dtype": DTYPES[rng.integers(4)],
            "framework": ("numpy", "torch", "jax")[rng.integers(3)],   # the same draws whatever FRAMEWORKS
            "layout": ("contiguous", "contiguous", "strided", "transposed", "0-d", "empty")[rng.integers(6)],
            "bits": int(rng.integers(2, 9)), "symmetric": bool(rng.random() < 0.5),
            "stochastic": bool(rng.random() < 0.5), "rng_seed": int(rng.integers(0, 2**63)),
            "invalid": None}
    rows, cols = int(rng.integers(1, 7)), 2 * int(rng.integers(1, 9))
    if case["layout"] == "0-d":
        rows, cols = 1, 1
    elif case["layout"] == "empty":
        rows = 0
    case["shape"] = (rows, cols)
    n = rows * cols
    case["groups"] = int(rng.choice(_divisors(n))) if n else 1
    if op.startswith(("swizzle", "loco_swizzle")):
        case["nodes"], case["dpn"] = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    if op.startswith(("quantized_reduction", "loco_quantized")):
        case["devices"] = int(rng.integers(1, 4))
    case["beta"] = float(rng.choice([0.0, 0.5, 1.0, rng.random()]))
    if rng.random() < 0.3:        # one invalid argument, and the error it must raise
        case["invalid"] = str(rng.choice(["groups=0", "groups=-3", "groups=huge", "groups=bool", "groups=float",
                                          "groups=too-many", "bits=1", "bits=huge", "bits=bool", "seed=bool",
                                          "seed=negative", "seed-without-stochastic", "input=int32", "input=list"]))
    return case


EXPECTED = {"groups=0": ValueError, "groups=-3": ValueError, "groups=huge": ValueError, "groups=bool": TypeError,
            "groups=float": TypeError, "groups=too-many": ValueError, "bits=1": ValueError, "bits=huge": ValueError,
            "bits=bool": TypeError, "seed=bool": TypeError, "seed=negative": ValueError,
            "seed-without-stochastic": ValueError, "input=int32": TypeError, "input=list": TypeError,
            "wrong-dtype": TypeError}
SEED_ERRORS = ("seed=bool", "seed=negative", "seed-without-stochastic")


# ------------------------------------------------------------------------------ running a case
def _to_framework(x, framework):
    """`x` (NumPy, any layout) as an array of `framework` with the same values and layout."""
    if framework == "numpy":
        return x
    if framework == "torch":
        import torch
        if x.dtype.name == "bfloat16":
            base = torch.from_numpy(np.ascontiguousarray(x).view(np.int16)).view(torch.bfloat16)
        else:
            base = torch.from_numpy(np.ascontiguousarray(x))
        return base
    import jax.numpy as jnp
    return jnp.asarray(x)


def _to_numpy(y):
    if type(y).__module__.startswith("torch"):
        import ml_dtypes
        import torch
        if y.dtype == torch.bfloat16:
            return y.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return y.numpy()
    return np.asarray(y)


def _layout(x, layout, rng):
    """A view of `x` (2-D, contiguous) in the case's layout; its values are what the op sees."""
    if layout == "strided":
        wide = np.repeat(x, 2, axis=1)
        wide[:, 1::2] = rng.permutation(wide[:, 1::2].reshape(-1)).reshape(wide[:, 1::2].shape) if wide.size else 0
        return wide[:, ::2]
    if layout == "transposed":
        return np.ascontiguousarray(x.T).T
    if layout == "0-d":
        return x.reshape(())
    return x


def _same(got, expected):
    """Bit equality, NaNs compared as NaNs (dsquant stores one canonical NaN)."""
    got, expected = np.ascontiguousarray(got), np.ascontiguousarray(expected)
    if got.shape != expected.shape or got.dtype != expected.dtype:
        return False
    if got.dtype.kind in "iu":
        return np.array_equal(got, expected)
    g, e = got.astype(np.float64), expected.astype(np.float64)
    nan = np.isnan(g)
    if not np.array_equal(nan, np.isnan(e)):
        return False
    return got[~nan].tobytes() == expected[~nan].tobytes()


def run_case(case):
    """(outcome, problem): "checked" (a valid call, bit-exact), "refused" (an invalid one, with the
    documented error), "unchecked" (valid, no reference for it) or "failed" with what went wrong."""
    import dsquant
    import reference as ref
    import reference_int as ref_int
    import reference_zeropp as ref_zpp
    from dsquant.compat import deepspeed as ds_ops

    rng = np.random.default_rng([case["seed"], case["index"], 1])
    op, bits, sym, sr = case["op"], case["bits"], case["symmetric"], case["stochastic"]
    rows, cols = case["shape"]
    n = rows * cols
    base = _values(rng, case["dtype"], n).reshape(rows, cols)
    x_np = _layout(base, case["layout"], rng)
    fw = case["framework"] if case["framework"] in FRAMEWORKS else "numpy"
    if fw == "jax" and (op in ("ds_quantizer", "compat.ds_quantize") or case["dtype"] == "float64"):
        fw = "numpy"     # in place: JAX arrays are immutable (a refusal tested elsewhere); no JAX float64 by default
    groups = case["groups"]
    invalid = case["invalid"]
    per = 8 // bits if 8 % bits == 0 else 1
    if op in ("quantize", "compat.quantize", "dequantize", "compat.dequantize", "swizzle_quantize",
              "loco_swizzle_quantize") and (cols % per or case["layout"] == "0-d" and per > 1):
        bits, per = 8, 1               # codes packed along the last dimension need whole bytes there
    seed = case["rng_seed"] if sr else None
    if invalid in SEED_ERRORS and op != "fake_quantize":
        invalid = None                 # only fake_quantize takes a seed
    if invalid and invalid.startswith("input") and op in ("dequantize", "quantized_reduction",
                                                          "loco_quantized_reduction", "compat.dequantize"):
        invalid = None                 # their inputs are codes: int8 is valid there
    if op == "dequantize" and invalid and invalid.startswith("groups"):
        invalid = None                 # dequantize takes the group count from params
    if invalid == "groups=too-many":
        groups = 2 * max(n, 1) + 1      # beyond the elements, and beyond compat.dequantize's params.numel()
    else:
        groups = {"groups=0": 0, "groups=-3": -3, "groups=huge": 2**64 + 1, "groups=bool": True,
                  "groups=float": 2.0}.get(invalid, groups)
    bits_arg = {"bits=1": 1, "bits=huge": 2**70, "bits=bool": True}.get(invalid, bits)
    if invalid == "seed=bool":
        sr, seed = True, True
    elif invalid == "seed=negative":
        sr, seed = True, -1
    elif invalid == "seed-without-stochastic":
        sr, seed = False, 5
    x = _to_framework(x_np, fw)
    if invalid == "input=int32":
        x = _to_framework(np.zeros((rows, cols), np.int32), fw)
    elif invalid == "input=list":
        x = x_np.tolist()

    def check(got, expected, what):
        got = _to_numpy(got)
        if not _same(got, expected):
            raise AssertionError(f"{what} differs from the reference:\n  got      {got!r}\n  expected {expected!r}")

    def codes_of(v, g):     # valid codes and params for the ops that read them
        return ref_int.quantize_ref(v, g, bits, sym)

    try:
        if op == "fake_quantize":
            dsquant.manual_seed(case["rng_seed"] % 1000)
            got = dsquant.fake_quantize(x, groups, bits_arg, symmetric=sym, stochastic=sr, seed=seed)
            s, off = (seed, 0) if seed is not None else (case["rng_seed"] % 1000, 0)
            check(got, ref.fake_quantize(x_np, groups, bits, sym, sr, s or 0, off), "fake_quantize")
        elif op in ("ds_quantizer", "compat.ds_quantize"):
            dsquant.manual_seed(case["rng_seed"] % 1000)
            expected = None if invalid else ref.fake_quantize(x_np, groups, bits, sym, sr, case["rng_seed"] % 1000, 0)
            if op == "ds_quantizer":
                result = dsquant.ds_quantizer(x, groups, bits_arg, sr=sr, asym=not sym)
            else:
                # DeepSpeed's dispatch: float16 to the _fp16 names, every other float dtype to _fp32
                width = "16" if case["dtype"] == "float16" else "32"
                name = f"ds_{'sr_' if sr else ''}quantize_{'' if sym else 'asym_'}fp{width}"
                result = getattr(ds_ops, name)(x, groups, bits_arg)
            if result is not x:
                raise AssertionError("in-place op did not return its input")
            check(x, expected, op)
        elif op in ("quantize", "compat.quantize"):
            if op == "quantize":
                q, params = dsquant.quantize(x, groups, bits_arg, symmetric=sym)
            else:
                q, params = ds_ops.quantize(x, groups, bits_arg, ds_ops.Symmetric if sym else ds_ops.Asymmetric)
            eq, ep = ref_int.quantize_ref(x_np, groups, bits, sym)
            check(_to_numpy(q).reshape(-1).view(np.uint8), eq, "codes")
            check(params, ep, "params")
        elif op in ("dequantize", "compat.dequantize"):
            data, params = codes_of(x_np, case["groups"])
            shape = x_np.shape[:-1] + (x_np.shape[-1] // per,) if x_np.ndim else ()
            q = _to_framework(data.view(np.int8).reshape(shape), fw)
            p = _to_framework(params, fw)
            out_dtype = "float16" if op == "compat.dequantize" else case["dtype"]
            if invalid == "input=list":
                q = data.tolist()
            if op == "dequantize":
                got = dsquant.dequantize(q, p, bits_arg, dtype=out_dtype)
            else:
                got = ds_ops.dequantize(q, p, groups, bits_arg, ds_ops.Symmetric if sym else ds_ops.Asymmetric)
            check(_to_numpy(got).reshape(-1), ref_int.dequantize_ref(data, params, bits, out_dtype), "values")
        elif op in ("swizzle_quantize", "loco_swizzle_quantize"):
            nodes, dpn = case["nodes"], case["dpn"]
            if invalid is None and groups % (nodes * dpn):
                nodes = dpn = 1
            if op == "swizzle_quantize":
                q, params = dsquant.swizzle_quantize(x, groups, bits_arg, symmetric=sym, nodes=nodes,
                                                     devices_per_node=dpn)
                eq, ep = ref_zpp.swizzle_ref(x_np, groups, bits, sym, 1, nodes, dpn)
            else:
                err0 = _values(rng, "float32", n) * np.float32(1e-3)
                err0 = np.where(np.isfinite(err0), err0, np.float32(0)).astype(np.float32)
                err = _to_framework(err0.copy(), "torch" if fw == "torch" else "numpy")
                if fw == "jax":
                    x = _to_framework(x_np, "numpy") if invalid not in ("input=int32", "input=list") else x
                q, params = dsquant.loco_swizzle_quantize(x, err, case["beta"], groups, bits_arg, symmetric=sym,
                                                          nodes=nodes, devices_per_node=dpn)
                if case["dtype"] == "float64":
                    return "unchecked", None   # the LoCo reference covers float32-compute inputs
                eq, ep, eerr = ref_zpp.loco_swizzle_ref(x_np, err0, case["beta"], groups, bits, sym, 1, nodes, dpn)
                check(err, eerr, "LoCo error")
            check(_to_numpy(q).reshape(-1).view(np.uint8), eq, "codes")
            check(params, ep, "params")
        else:   # quantized_reduction and its LoCo variant
            dev = case["devices"]
            per = ref_int.codes_per_byte(bits)
            slab = max(n, 1) * per
            values = _values(rng, "float32", dev * slab)
            in_groups = dev
            data, params = ref_int.quantize_ref(values, in_groups, bits, sym)
            bad_groups = {"groups=0": 0, "groups=-3": -3, "groups=huge": 2**64 + 1, "groups=bool": True,
                          "groups=float": 2.0, "groups=too-many": slab + 1}
            out_groups = bad_groups.get(invalid, int(rng.choice(_divisors(slab))))
            q = _to_framework(data.view(np.int8), fw if fw != "jax" else "numpy")
            p = _to_framework(params, fw if fw != "jax" else "numpy")
            if invalid in ("input=int32", "input=list"):
                q = np.zeros(data.size, np.int32) if invalid == "input=int32" else data.tolist()
            if op == "quantized_reduction":
                r, rp = dsquant.quantized_reduction(q, p, in_groups, out_groups, bits_arg, symmetric=sym,
                                                    devices_per_node=dev)
                er, erp = ref_zpp.reduction_ref(data, params, in_groups, out_groups, bits, sym, dev)
            else:
                err0 = np.zeros(slab, np.float32)
                err = _to_framework(err0.copy(), "torch" if fw == "torch" else "numpy")
                r, rp = dsquant.loco_quantized_reduction(q, p, err, case["beta"], in_groups, out_groups, bits_arg,
                                                         symmetric=sym, devices_per_node=dev)
                er, erp, eerr = ref_zpp.loco_reduction_ref(data, params, err0, case["beta"], in_groups, out_groups,
                                                           bits, sym, dev)
                check(err, eerr, "LoCo error")
            check(_to_numpy(r).reshape(-1).view(np.uint8), er, "codes")
            check(rp, erp, "params")
    except Exception as exc:  # noqa: BLE001 - every failure is reported with its case
        if invalid is not None and isinstance(exc, EXPECTED[invalid]):
            return "refused", None
        return "failed", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
    if invalid is not None:
        return "failed", f"accepted the invalid argument {invalid}"
    return "checked", None


def reproducer(case) -> str:
    return (f"case {json.dumps(case)}\n  replay: python tests/test_fuzz.py {case['seed']} {case['index']}")


def child(seed: int, count: int) -> None:
    """Run `count` cases, printing the index of each before running it (the parent's crash report)."""
    sys.path.insert(0, HERE)
    counts = dict.fromkeys(("checked", "refused", "unchecked", "failed"), 0)
    for i in range(count):
        case = draw(seed, i)
        print(f"start {i}", flush=True)
        outcome, problem = run_case(case)
        counts[outcome] += 1
        if problem is not None:
            print(f"FAIL {reproducer(case)}\n  {problem}", flush=True)
    print(f"done {count} calls: {counts['checked']} valid checked bit-exactly, {counts['refused']} invalid refused "
          f"with the documented error, {counts['unchecked']} valid without a reference, {counts['failed']} failures",
          flush=True)


def test_fuzz():
    import dsquant
    # the child imports the dsquant this test imported (not whatever its own sys.path finds first)
    root = os.path.dirname(os.path.dirname(os.path.abspath(dsquant.__file__)))
    env = dict(os.environ, DSQUANT_NUM_THREADS=os.environ.get("DSQUANT_NUM_THREADS", "2"),
               PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run([sys.executable, __file__, "--child", str(SEED), str(CALLS)], check=False,
                          capture_output=True, text=True, env=env, timeout=max(600, CALLS // 10))
    lines = proc.stdout.splitlines()
    failures = [line for line in lines if not line.startswith("start ")]
    if proc.returncode != 0:
        started = [line for line in lines if line.startswith("start ")]
        last = int(started[-1].split()[1]) if started else 0
        raise AssertionError(f"the fuzz child died (exit {proc.returncode}) during\n{reproducer(draw(SEED, last))}\n"
                             f"{proc.stderr[-3000:]}")
    summary = lines[-1] if lines else ""
    assert summary.startswith("done") and summary.endswith(" 0 failures"), "\n".join(failures)[-6000:]
    print(summary)


if __name__ == "__main__":
    if sys.argv[1] == "--child":
        child(int(sys.argv[2]), int(sys.argv[3]))
    else:                                        # replay one case
        sys.path.insert(0, HERE)
        one = draw(int(sys.argv[1]), int(sys.argv[2]))
        print(reproducer(one))
        print(*run_case(one))
