"""``python -m dsquant kernels``: compile every CUDA kernel instantiation and report ptxas'
registers, stack frame and spills per kernel.

``--compile-only`` needs no GPU and no CuPy, only NVRTC (``pip install ".[compile]"``): it is
the check CI runs. It exits with 1 on a compile error, a kernel that did not compile, or any
spill or stack frame (local memory), else 0.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from contextlib import contextmanager

from ...core import missing
from . import kernels as _kernels


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--compile-only", action="store_true",
                   help="compile with NVRTC for --arch targets; no GPU needed")
    p.add_argument("--arch", action="append", metavar="sm_XX",
                   help=f"target architecture, repeatable (default with --compile-only: "
                        f"{' '.join(_kernels.CHECK_ARCHS)}; else each visible GPU's)")
    p.add_argument("--fresh", action="store_true",
                   help="compile into a temporary cache instead of reusing the kernel cache")
    return p


@contextmanager
def _cache(fresh: bool):
    if not fresh:
        yield
        return
    saved = os.environ.get("DSQUANT_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="dsquant-kernels-") as tmp:
        os.environ["DSQUANT_CACHE_DIR"] = tmp
        try:
            yield
        finally:
            if saved is None:
                del os.environ["DSQUANT_CACHE_DIR"]
            else:
                os.environ["DSQUANT_CACHE_DIR"] = saved


def _device_targets() -> list[str]:
    from . import device   # needs CuPy and a GPU
    import cupy
    _supported_archs()     # NVRTC loads, or one line saying what to install
    driver = cupy.cuda.runtime.driverGetVersion()   # a GPU newer than NVRTC: can the driver take PTX?
    return sorted({_kernels.target_for(int(cupy.cuda.Device(i).compute_capability), driver)
                   for i in range(device.device_count())})


def check(target: str, out=None) -> bool:
    """Compile every module for `target`, print the resource table; True when all is clean."""
    out = sys.stdout if out is None else out
    clean = True
    every = {}   # resources of every kernel of every module
    for module, names in _kernels.MODULES.items():
        try:
            compiled = _kernels.compile_module(module, target)
        except _kernels.CompileError as exc:
            print(exc, file=out)
            return False
        resources = compiled.resources()
        width = max(map(len, names))
        print(f"\n{module} for {target} ({len(names)} instantiations)", file=out)
        print(f"{'kernel':<{width}}  regs  stack  spill-st  spill-ld", file=out)
        for name in names:
            r = resources.get(name)
            if r is None:
                if target.startswith("sm_"):   # PTX targets have no ptxas report
                    print(f"{name:<{width}}  NOT COMPILED", file=out)
                    clean = False
                continue
            bad = r["stack"] or r["spill_stores"] or r["spill_loads"]
            clean = clean and not bad
            print(f"{name:<{width}}  {r['registers']:4d}  {r['stack']:5d}  {r['spill_stores']:8d}  "
                  f"{r['spill_loads']:8d}{'  <-- local memory' if bad else ''}", file=out)
        every.update(resources)
    if every:
        print(f"\n{target}: {len(every)} kernels, at most {max(r['registers'] for r in every.values())} "
              f"registers, {sum(r['spill_stores'] + r['spill_loads'] for r in every.values())} spill bytes, "
              f"{sum(r['stack'] for r in every.values())} stack bytes", file=out)
    return clean


def _supported_archs() -> tuple[int, ...]:
    try:
        return _kernels.supported_archs()
    except RuntimeError as exc:   # cuda-bindings is there but finds no NVRTC library to load
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise missing.MissingDependency(f"cuda-bindings cannot load NVRTC ({reason}): {missing.COMPILE}") from None


def main(argv=None, prog: str = "python -m dsquant kernels") -> int:
    args = _parser(prog).parse_args(argv)
    if args.arch:
        targets = args.arch
    elif args.compile_only:
        targets = list(_kernels.CHECK_ARCHS)
    else:
        try:
            from . import device   # noqa: F401 - CuPy, or the line saying what to install
        except ImportError as exc:
            print(f"{prog}: {exc} (or use --compile-only to compile without a GPU)", file=sys.stderr)
            return 1
        try:
            targets = _device_targets()
        except RuntimeError as exc:   # no target this NVRTC and driver can run on the GPU
            print(exc, file=sys.stderr)
            return 1
        if not targets:
            print("no CUDA GPU visible; use --compile-only", file=sys.stderr)
            return 1
    archs = _supported_archs()
    known = {f"sm_{a}" for a in archs} | {f"compute_{a}" for a in archs}
    unknown = [t for t in targets if t not in known]
    if unknown:
        print(f"NVRTC {'.'.join(map(str, _kernels.nvrtc_version()))} cannot compile for {', '.join(unknown)}; "
              f"it supports {', '.join(sorted(known))}", file=sys.stderr)
        return 1
    with _cache(args.fresh):
        results = [check(t) for t in targets]
    ok = all(results)
    print(f"\n{'OK' if ok else 'FAILED'}: {' '.join(targets)}")
    return 0 if ok else 1
