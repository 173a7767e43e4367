"""``python -m dsquant gpu-bench``: GPU throughput of fake quantization on 2^28-element float16
and float32 arrays (group sizes 128, 4096 and one single group; nearest and stochastic rounding),
and of integer quantize and dequantize (int8 and int4 codes, group sizes 128 and 4096), as GB/s
(bytes read + written) and as a ratio to a CuPy device-to-device copy of the same bytes measured
in the same run; and DeepSpeed's own fake-quantization kernels on the same inputs when
``deepspeed`` is importable.

Each time is the median over batches of back-to-back calls timed with CUDA events, divided by
the batch size: the GPU's steady throughput. "ms", "GB/s" and "vs copy" time the kernels of one
call launched directly (its launch plan, prepared once); "API vs copy" times the whole public call
``fake_quantize(x, ..., out=y)``, whose Python work overlaps the previous call's kernels unless
it takes longer than they do. A single group needs its statistics before any output, so it reads
the array twice ("passes" 3 counts that traffic): it cannot reach the copy's time, and its
"bandwidth" column is the fairer comparison. Integer rows move the input, the codes and the params
(quantize reads the first and writes the others, dequantize the reverse, into the input's dtype).
ZeRO++ rows time the public ``swizzle_quantize`` and ``quantized_reduction`` calls (float16,
4 bits, groups of 2048, 2 nodes x 4 devices) on 2^(n-2), 2^(n-1) and 2^n elements against a copy
of the bytes each moves (swizzle: input, codes, params; reduction: the 4 slabs' codes and params
in, the summed codes and params out).
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys

import numpy as np

from .. import dequantize, fake_quantize, quantize, quantized_reduction, swizzle_quantize
from ..core import dtypes

GROUP_SIZES = {"128": 128, "4096": 4096, "all": None}
DTYPES = ("float16", "float32")
INT_BITS = (8, 4)
INT_GROUP_SIZES = (128, 4096)
ZEROPP = dict(bits=4, group=2048, nodes=2, devices_per_node=4)   # DeepSpeed's qgZ defaults, 8 GPUs


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--log2-size", type=int, default=28, help="elements per array, as a power of two (28)")
    p.add_argument("--bits", type=int, default=8)
    p.add_argument("--batches", type=int, default=10, help="timed batches per row (median taken)")
    p.add_argument("--batch", type=int, default=10, help="calls per batch")
    p.add_argument("--no-deepspeed", action="store_true", help="skip DeepSpeed even if importable")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    return p


def _median_ms(cupy, fn, batches: int, batch: int, stream) -> float:
    """Median over `batches` of the event-timed time of `batch` back-to-back calls, per call."""
    for _ in range(2):
        fn()                                             # warm-up: compile, load, allocate
    stream.synchronize()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(batches):
        start.record(stream)
        for _ in range(batch):
            fn()
        end.record(stream)
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / batch)
    return statistics.median(times)


def _deepspeed():
    """DeepSpeed's ds_quantizer, or the reason it cannot be used here."""
    try:
        from deepspeed.ops.quantizer import ds_quantizer
        return ds_quantizer, None
    except Exception as exc:   # noqa: BLE001 - not installed, or its extension does not build here
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0][:120]


def main(argv=None, prog: str = "python -m dsquant gpu-bench") -> int:
    args = _parser(prog).parse_args(argv)
    from ..backends.cuda import device as _cuda  # imports CuPy, or raises MissingDependency saying what to install
    import cupy

    from ..backends.cuda import launch as _launch
    if _cuda.device_count() == 0:
        print(f"{prog}: no CUDA GPU visible (CuPy sees no device; nvidia-smi lists what the driver sees)",
              file=sys.stderr)
        return 1
    n = 1 << args.log2_size
    device = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(device.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    stream = cupy.cuda.get_current_stream()
    ds_quantizer, ds_reason = (None, "skipped (--no-deepspeed)") if args.no_deepspeed else _deepspeed()
    torch = None
    if ds_quantizer is not None:
        import torch
    rows, int_rows = [], []
    for dtype in DTYPES:
        x = cupy.random.standard_normal(n, dtype=cupy.float32).astype(dtype)
        out = cupy.empty_like(x)
        copy_ms = _median_ms(cupy, lambda: out.data.copy_from_device_async(x.data, x.nbytes, stream),
                             args.batches, args.batch, stream)
        moved = 2 * x.nbytes
        for group_name, size in GROUP_SIZES.items():
            groups = 1 if size is None else n // size
            dtype_code = dtypes.BY_NAME[dtype].code
            passes = 2 if _launch.resident_shape(dtype_code, n // groups) else 3
            for rounding, sr in (("nearest", False), ("stochastic", True)):
                _keys, kernels = _kernels_only(_cuda, _launch, cupy, x, out, dtype_code, groups, args.bits, sr,
                                               stream)
                ms = _median_ms(cupy, kernels, args.batches, args.batch, stream)
                api_ms = _median_ms(cupy, lambda: fake_quantize(x, groups, args.bits, stochastic=sr, seed=1, out=out),
                                    args.batches, args.batch, stream)
                row = {"dtype": dtype, "group": group_name, "rounding": rounding, "ms": ms,
                       "GB/s": moved / ms / 1e6, "copy GB/s": moved / copy_ms / 1e6, "vs copy": copy_ms / ms,
                       "API vs copy": copy_ms / api_ms, "passes": passes,
                       "bandwidth": passes * x.nbytes / ms / (moved / copy_ms)}
                if ds_quantizer is not None:
                    row["DeepSpeed GB/s"] = _deepspeed_gbps(cupy, torch, ds_quantizer, x, groups, args, sr, moved)
                rows.append(row)
        int_rows.extend(_int_rows(cupy, _cuda, _launch, x, dtype, args, stream))
        del x, out
        cupy.get_default_memory_pool().free_all_blocks()
    zeropp_rows = [row for size in (n >> 2, n >> 1, n) for row in _zeropp_rows(cupy, size, args, stream)]
    _print(rows, name, n, args, ds_reason)
    _print_int(int_rows)
    _print_zeropp(zeropp_rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "elements": n, "bits": args.bits, "rows": rows, "int_rows": int_rows,
                       "zeropp_rows": zeropp_rows,
                       "date": datetime.date.today().isoformat(), "deepspeed": ds_reason or "measured"}, f, indent=1)
    return 0


def _int_rows(cupy, _cuda, _launch, x, dtype: str, args, stream) -> list[dict]:
    """quantize and dequantize rows for one input: each op's kernels launched directly (its launch
    plan, prepared once), the public call, and a copy of as many bytes as the op moves."""
    dtype_code = dtypes.BY_NAME[dtype].code
    device = _cuda.device_kernels(x.device.id)
    y = cupy.empty_like(x)
    rows = []
    for bits in INT_BITS:
        for size in INT_GROUP_SIZES:
            groups = x.size // size
            q, params = quantize(x, groups, bits)
            moved = x.nbytes + q.nbytes + params.nbytes
            src, dst = cupy.empty(moved // 2, np.uint8), cupy.empty(moved // 2, np.uint8)
            copy_ms = _median_ms(cupy, lambda: dst.data.copy_from_device_async(src.data, src.nbytes, stream),
                                 args.batches, args.batch, stream)
            plans = {   # symmetric codes: no statistics scratch for these group sizes
                "quantize": (_launch.quantize(dtype_code, x.data.ptr, q.data.ptr, params.data.ptr, x.size, groups,
                                              bits, True),
                             lambda: quantize(x, groups, bits)),
                "dequantize": (_launch.dequantize(dtype_code, q.data.ptr, params.data.ptr, y.data.ptr, x.size, groups,
                                                  bits, True),
                               lambda: dequantize(q, params, bits, out=y)),
            }
            for op, (plan, api) in plans.items():
                ms = _median_ms(cupy, lambda: _cuda.run(plan, device, stream), args.batches, args.batch, stream)
                api_ms = _median_ms(cupy, api, args.batches, args.batch, stream)
                rows.append({"op": op, "dtype": dtype, "bits": bits, "group": size, "ms": ms, "GB/s": moved / ms / 1e6,
                             "copy GB/s": moved / copy_ms / 1e6, "vs copy": copy_ms / ms,
                             "API vs copy": copy_ms / api_ms})
            del src, dst, q, params
    return rows


def _zeropp_rows(cupy, n: int, args, stream) -> list[dict]:
    """swizzle_quantize and quantized_reduction of `n` float16 values (public calls) vs a copy."""
    bits, dpn = ZEROPP["bits"], ZEROPP["devices_per_node"]
    groups = n // ZEROPP["group"]
    x = cupy.random.standard_normal(n, dtype=cupy.float32).astype(cupy.float16)
    layout = dict(nodes=ZEROPP["nodes"], devices_per_node=dpn)
    q, p = swizzle_quantize(x, groups, bits, **layout)
    r, rp = quantized_reduction(q, p, groups, groups // dpn, bits, devices_per_node=dpn)
    calls = {"swizzle_quantize": (lambda: swizzle_quantize(x, groups, bits, **layout),
                                  x.nbytes + q.nbytes + p.nbytes),
             "quantized_reduction": (lambda: quantized_reduction(q, p, groups, groups // dpn, bits, devices_per_node=dpn),
                                     q.nbytes + p.nbytes + r.nbytes + rp.nbytes)}
    rows = []
    for op, (call, moved) in calls.items():
        src, dst = cupy.empty(moved // 2, np.uint8), cupy.empty(moved // 2, np.uint8)
        copy_ms = _median_ms(cupy, lambda: dst.data.copy_from_device_async(src.data, src.nbytes, stream),
                             args.batches, args.batch, stream)
        ms = _median_ms(cupy, call, args.batches, args.batch, stream)
        rows.append({"op": op, "elements": n, "ms": ms, "GB/s": moved / ms / 1e6, "copy GB/s": moved / copy_ms / 1e6,
                     "vs copy": copy_ms / ms})
        del src, dst
    return rows


def _print_zeropp(rows) -> None:
    print(f"\nZeRO++ ops, float16, {ZEROPP['bits']} bits, groups of {ZEROPP['group']}, {ZEROPP['nodes']} nodes x "
          f"{ZEROPP['devices_per_node']} devices, symmetric, round to nearest; public calls (bytes moved: codes and "
          f"params in and out); vs copy: copy time of the same bytes / call time")
    head = ["op", "elements", "ms", "GB/s", "copy GB/s", "vs copy"]
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print(f"| {r['op']} | {r['elements']:,} | {r['ms']:.3f} | {r['GB/s']:.0f} | {r['copy GB/s']:.0f} | "
              f"{r['vs copy']:.2f} |")


def _print_int(rows) -> None:
    print("\nInteger codes, symmetric, round to nearest (bytes moved: input + codes + params); vs copy: copy time "
          "of the same bytes / kernel time; API vs copy: the same for the public call")
    head = ["op", "dtype", "bits", "group", "ms", "GB/s", "copy GB/s", "vs copy", "API vs copy"]
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print(f"| {r['op']} | {r['dtype']} | {r['bits']} | {r['group']} | {r['ms']:.3f} | {r['GB/s']:.0f} | "
              f"{r['copy GB/s']:.0f} | {r['vs copy']:.2f} | {r['API vs copy']:.2f} |")


def _kernels_only(_cuda, _launch, cupy, x, out, dtype_code, groups, bits, sr, stream):
    """(scratch to keep alive, a function launching the kernels of one call without the API)."""
    nbytes = _launch.keys_nbytes(dtype_code, x.size, groups)
    keys = cupy.empty(max(nbytes, 1), np.uint8)
    plan = _launch.fake_quantize(dtype_code, x.data.ptr, out.data.ptr, x.size, groups, bits, True, sr, 1, 0,
                                 keys.data.ptr if nbytes else 0)
    device = _cuda.device_kernels(x.device.id)
    return keys, lambda: _cuda.run(plan, device, stream)


def _deepspeed_gbps(cupy, torch, ds_quantizer, x, groups, args, sr, moved):
    """DeepSpeed's in-place kernels on a torch view of a copy of x, on torch's current stream."""
    if x.size // groups > 1 << 20:
        return None            # DeepSpeed returns the input unchanged for groups over 2^20 elements
    t = torch.from_dlpack(x.copy())
    torch_stream = torch.cuda.current_stream()
    ptr = torch_stream.cuda_stream
    stream = cupy.cuda.ExternalStream(ptr) if ptr else cupy.cuda.Stream.null
    ms = _median_ms(cupy, lambda: ds_quantizer(t, groups, args.bits, sr), args.batches, args.batch, stream)
    return moved / ms / 1e6


def _print(rows, name, n, args, ds_reason) -> None:
    print(f"\nGPU benchmark: {name}, {n:,} elements (2^{args.log2_size}), {args.bits} bits, symmetric; "
          f"median of {args.batches} batches of {args.batch} calls; {datetime.date.today().isoformat()}")
    if ds_reason:
        print(f"DeepSpeed: not measured ({ds_reason})")
    print("vs copy: copy time / kernel time (target >= 0.85 where passes = 2); API vs copy: the same for the "
          "public call; bandwidth: bytes the passes move per second / copy GB/s (one group reads twice, writes once)")
    has_ds = any("DeepSpeed GB/s" in r for r in rows)
    head = ["dtype", "group", "rounding", "ms", "GB/s", "copy GB/s", "vs copy", "API vs copy", "passes", "bandwidth"]
    head += ["DeepSpeed GB/s"] if has_ds else []
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["dtype"], r["group"], r["rounding"], f"{r['ms']:.3f}", f"{r['GB/s']:.0f}", f"{r['copy GB/s']:.0f}",
                 f"{r['vs copy']:.2f}", f"{r['API vs copy']:.2f}", str(r["passes"]), f"{r['bandwidth']:.2f}"]
        if has_ds:
            ds = r.get("DeepSpeed GB/s")
            cells.append("no-op (S > 2^20)" if ds is None else f"{ds:.0f}")
        print("| " + " | ".join(cells) + " |")
