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

Rows are printed (and ``--json`` rewritten) as soon as each is measured, so a crash or a hang
loses nothing already measured; a row that raises is printed as FAILED with the error and the
benchmark goes on (exit status 1 if any row failed).
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


class _Table:
    """A markdown table printed row by row as each is measured (a later failure or hang loses
    nothing already printed); a row that raises is printed as failed and skipped."""

    def __init__(self, title: str, head: list[str], key: str, report: dict, json_path: str | None):
        self.head, self.key, self.report, self.json_path = head, key, report, json_path
        self.rows = report.setdefault(key, [])
        self.failed = 0
        print(f"\n{title}\n\n| " + " | ".join(head) + " |\n|" + "---|" * len(head), flush=True)

    def row(self, label: list[str], measure, cells) -> None:
        """`measure()` gives one row's dict (or None: nothing to report), `cells(row)` its cells
        after the `label` ones; any exception is reported in the row and the table goes on."""
        try:
            row = measure()
        except Exception as exc:   # noqa: BLE001 - one failing row must not lose the others
            self.failed += 1
            message = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            print("| " + " | ".join(label) + f" | FAILED: {message} |", flush=True)
            self.rows.append({"label": label, "error": message})
        else:
            if row is None:
                return
            print("| " + " | ".join(label + cells(row)) + " |", flush=True)
            self.rows.append(row)
        if self.json_path:   # rewritten after every row, so a crash leaves what was measured
            with open(self.json_path, "w") as f:
                json.dump(self.report, f, indent=1)


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
    report = {"device": name, "elements": n, "bits": args.bits, "date": datetime.date.today().isoformat(),
              "deepspeed": ds_reason or "measured"}
    tables = [_fake_table(cupy, _cuda, _launch, n, name, args, stream, ds_quantizer, ds_reason, torch, report),
              _int_table(cupy, _cuda, _launch, n, args, stream, report),
              _zeropp_table(cupy, n, args, stream, report)]
    return 1 if any(t.failed for t in tables) else 0


def _arrays(cupy, n: int, dtype: str):
    x = cupy.random.standard_normal(n, dtype=cupy.float32).astype(dtype)
    return x, cupy.empty_like(x)


def _free(cupy) -> None:
    cupy.get_default_memory_pool().free_all_blocks()


def _fake_table(cupy, _cuda, _launch, n, name, args, stream, ds_quantizer, ds_reason, torch, report):
    print(f"\nGPU benchmark: {name}, {n:,} elements (2^{args.log2_size}), {args.bits} bits, symmetric; "
          f"median of {args.batches} batches of {args.batch} calls; {datetime.date.today().isoformat()}")
    if ds_reason:
        print(f"DeepSpeed: not measured ({ds_reason})")
    print("vs copy: copy time / kernel time (target >= 0.85 where passes = 2); API vs copy: the same for the "
          "public call; bandwidth: bytes the passes move per second / copy GB/s (one group reads twice, writes once)")
    head = ["dtype", "group", "rounding", "ms", "GB/s", "copy GB/s", "vs copy", "API vs copy", "passes", "bandwidth"]
    head += ["DeepSpeed GB/s"] if ds_quantizer is not None else []
    table = _Table("Fake quantization", head, "rows", report, args.json)

    def cells(r):
        out = [f"{r['ms']:.3f}", f"{r['GB/s']:.0f}", f"{r['copy GB/s']:.0f}", f"{r['vs copy']:.2f}",
               f"{r['API vs copy']:.2f}", str(r["passes"]), f"{r['bandwidth']:.2f}"]
        if ds_quantizer is not None:
            ds = r.get("DeepSpeed GB/s")
            out.append("no-op (S > 2^20)" if ds is None else f"{ds:.0f}")
        return out

    for dtype in DTYPES:
        x, out = _arrays(cupy, n, dtype)
        copy_ms = _median_ms(cupy, lambda: out.data.copy_from_device_async(x.data, x.nbytes, stream),
                             args.batches, args.batch, stream)
        moved = 2 * x.nbytes
        for group_name, size in GROUP_SIZES.items():
            groups = 1 if size is None else n // size
            dtype_code = dtypes.BY_NAME[dtype].code
            passes = 2 if _launch.resident_shape(dtype_code, n // groups) else 3
            for rounding, sr in (("nearest", False), ("stochastic", True)):
                def measure():
                    _keys, kernels = _kernels_only(_cuda, _launch, cupy, x, out, dtype_code, groups, args.bits, sr,
                                                   stream)
                    ms = _median_ms(cupy, kernels, args.batches, args.batch, stream)
                    api_ms = _median_ms(cupy, lambda: fake_quantize(x, groups, args.bits, stochastic=sr,
                                                                    seed=1 if sr else None, out=out), args.batches, args.batch, stream)
                    row = {"dtype": dtype, "group": group_name, "rounding": rounding, "ms": ms,
                           "GB/s": moved / ms / 1e6, "copy GB/s": moved / copy_ms / 1e6, "vs copy": copy_ms / ms,
                           "API vs copy": copy_ms / api_ms, "passes": passes,
                           "bandwidth": passes * x.nbytes / ms / (moved / copy_ms)}
                    if ds_quantizer is not None:
                        row["DeepSpeed GB/s"] = _deepspeed_gbps(cupy, torch, ds_quantizer, x, groups, args, sr,
                                                                moved)
                    return row
                table.row([dtype, group_name, rounding], measure, cells)
        del x, out
        _free(cupy)
    return table


def _int_table(cupy, _cuda, _launch, n, args, stream, report):
    head = ["op", "dtype", "bits", "group", "ms", "GB/s", "copy GB/s", "vs copy", "API vs copy"]
    table = _Table("Integer codes, symmetric, round to nearest (bytes moved: input + codes + params); vs copy: copy "
                   "time of the same bytes / kernel time; API vs copy: the same for the public call", head, "int_rows", report,
                   args.json)
    for dtype in DTYPES:
        x, y = _arrays(cupy, n, dtype)
        _int_rows(cupy, _cuda, _launch, x, y, dtype, args, stream, table)
        del x, y
        _free(cupy)
    return table


def _zeropp_table(cupy, n, args, stream, report):
    title = (f"ZeRO++ ops, float16, {ZEROPP['bits']} bits, groups of {ZEROPP['group']}, {ZEROPP['nodes']} nodes x "
             f"{ZEROPP['devices_per_node']} devices, symmetric, round to nearest; public calls (bytes moved: codes and "
             f"params in and out); vs copy: copy time of the same bytes / call time")
    table = _Table(title, ["op", "elements", "ms", "GB/s", "copy GB/s", "vs copy"], "zeropp_rows", report, args.json)
    for size in (n >> 2, n >> 1, n):
        _zeropp_rows(cupy, size, args, stream, table)
        _free(cupy)
    return table


def _int_rows(cupy, _cuda, _launch, x, y, dtype: str, args, stream, table: _Table) -> None:
    """quantize and dequantize rows for one input: each op's kernels launched directly (its launch
    plan, prepared once), the public call, and a copy of as many bytes as the op moves."""
    dtype_code = dtypes.BY_NAME[dtype].code
    device = _cuda.device_kernels(x.device.id)

    def cells(r):
        return [f"{r['ms']:.3f}", f"{r['GB/s']:.0f}", f"{r['copy GB/s']:.0f}", f"{r['vs copy']:.2f}",
                f"{r['API vs copy']:.2f}"]

    for bits in INT_BITS:
        for size in INT_GROUP_SIZES:
            groups = x.size // size
            state = {}

            def prepare():
                q, params = quantize(x, groups, bits)
                moved = x.nbytes + q.nbytes + params.nbytes
                src, dst = cupy.empty(moved // 2, np.uint8), cupy.empty(moved // 2, np.uint8)
                state.update(q=q, params=params, moved=moved, copy_ms=_median_ms(
                    cupy, lambda: dst.data.copy_from_device_async(src.data, src.nbytes, stream), args.batches,
                    args.batch, stream))

            for op in ("quantize", "dequantize"):
                def measure():
                    if not state:
                        prepare()
                    q, params, moved, copy_ms = state["q"], state["params"], state["moved"], state["copy_ms"]
                    if op == "quantize":   # symmetric codes: no statistics scratch for these group sizes
                        plan = _launch.quantize(dtype_code, x.data.ptr, q.data.ptr, params.data.ptr, x.size, groups,
                                                bits, True)
                        api = lambda: quantize(x, groups, bits)                          # noqa: E731
                    else:
                        plan = _launch.dequantize(dtype_code, q.data.ptr, params.data.ptr, y.data.ptr, x.size,
                                                  groups, bits, True)
                        api = lambda: dequantize(q, params, bits, out=y)                 # noqa: E731
                    ms = _median_ms(cupy, lambda: _cuda.run(plan, device, stream), args.batches, args.batch, stream)
                    api_ms = _median_ms(cupy, api, args.batches, args.batch, stream)
                    return {"op": op, "dtype": dtype, "bits": bits, "group": size, "ms": ms, "GB/s": moved / ms / 1e6,
                            "copy GB/s": moved / copy_ms / 1e6, "vs copy": copy_ms / ms, "API vs copy": copy_ms / api_ms}
                table.row([op, dtype, str(bits), str(size)], measure, cells)
            state.clear()


def _zeropp_rows(cupy, n: int, args, stream, table: _Table) -> None:
    """swizzle_quantize and quantized_reduction of `n` float16 values (public calls) vs a copy."""
    bits, dpn = ZEROPP["bits"], ZEROPP["devices_per_node"]
    groups = n // ZEROPP["group"]
    layout = dict(nodes=ZEROPP["nodes"], devices_per_node=dpn)
    state = {}

    def prepare():
        x = cupy.random.standard_normal(n, dtype=cupy.float32).astype(cupy.float16)
        q, p = swizzle_quantize(x, groups, bits, **layout)
        r, rp = quantized_reduction(q, p, groups, groups // dpn, bits, devices_per_node=dpn)
        state["swizzle_quantize"] = (lambda: swizzle_quantize(x, groups, bits, **layout),
                                     x.nbytes + q.nbytes + p.nbytes)
        state["quantized_reduction"] = (lambda: quantized_reduction(q, p, groups, groups // dpn, bits,
                                                                    devices_per_node=dpn),
                                        q.nbytes + p.nbytes + r.nbytes + rp.nbytes)

    def cells(r):
        return [f"{r['ms']:.3f}", f"{r['GB/s']:.0f}", f"{r['copy GB/s']:.0f}", f"{r['vs copy']:.2f}"]

    for op in ("swizzle_quantize", "quantized_reduction"):
        def measure():
            if not state:
                prepare()
            call, moved = state[op]
            src, dst = cupy.empty(moved // 2, np.uint8), cupy.empty(moved // 2, np.uint8)
            copy_ms = _median_ms(cupy, lambda: dst.data.copy_from_device_async(src.data, src.nbytes, stream),
                                 args.batches, args.batch, stream)
            ms = _median_ms(cupy, call, args.batches, args.batch, stream)
            return {"op": op, "elements": n, "ms": ms, "GB/s": moved / ms / 1e6, "copy GB/s": moved / copy_ms / 1e6,
                    "vs copy": copy_ms / ms}
        table.row([op, f"{n:,}"], measure, cells)
    state.clear()


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
    from ..backends.cuda import device as _cuda
    t = torch.from_dlpack(x.copy())
    stream = _cuda.external_stream(torch.cuda.current_stream().cuda_stream, x.device.id)
    ms = _median_ms(cupy, lambda: ds_quantizer(t, groups, args.bits, sr), args.batches, args.batch, stream)
    return moved / ms / 1e6
