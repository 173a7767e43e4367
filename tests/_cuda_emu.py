"""Runs launch plans of dsquant.backends.cuda.launch on the CPU through tests/emu/cuda_emu.hpp: every kernel
instantiation of dsquant.backends.cuda.kernels compiled as C++ with the host numerics flags of setup.py, one
block after another, each thread a fiber. Lets the tests check the GPU kernels' indexing, work
split and reductions bit for bit against the CPU path on a machine without a GPU."""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from dsquant.backends.cuda import kernels as _kernels

HERE = Path(__file__).resolve().parent
# The numerics flags of setup.py's COMPILE: the emulated kernels must round as the CPU path does.
FLAGS = ["-std=c++17", "-O1", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno", "-shared", "-fPIC", "-w"]


def compiler() -> str:
    found = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not found:
        raise RuntimeError("the kernel emulation needs a C++17 compiler (the one that builds dsquant)")
    return found


class Emulator:
    """`names`: kernel name expressions; `includes`: files whose kernels they name."""

    def __init__(self, build_dir: Path, names=None, includes=None, extra_include_dirs=()):
        self.names = list(names or (n for ns in _kernels.MODULES.values() for n in ns))
        self.index = {n: i for i, n in enumerate(self.names)}
        lines = ['#include "cuda_emu.hpp"']
        lines += [f'#include "{f}"' for f in (includes or _kernels.MODULES)]
        lines.append('extern "C" int dsq_emu_launch(int which, unsigned grid, unsigned block, void** args) {')
        lines.append("  switch (which) {")
        lines += [f"    case {i}: return emu::launch(&{n}, grid, block, args);" for i, n in enumerate(self.names)]
        lines += ["  }", "  return -2;", "}",
                  'extern "C" const char* dsq_emu_error() { return emu::error.c_str(); }']
        source = build_dir / "kernels_emu.cpp"
        source.write_text("\n".join(lines) + "\n")
        lib = build_dir / "kernels_emu.so"
        include = [f"-I{d}" for d in (HERE / "emu", _kernels.source_dir(), *extra_include_dirs)]
        subprocess.run([compiler(), *FLAGS, *include, str(source), "-o", str(lib)], check=True)
        self.lib = ctypes.CDLL(str(lib))
        self.lib.dsq_emu_launch.restype = ctypes.c_int
        self.lib.dsq_emu_launch.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                            ctypes.POINTER(ctypes.c_void_p)]
        self.lib.dsq_emu_error.restype = ctypes.c_char_p

    def launch(self, kernel: str, grid: int, block: int, args) -> None:
        holders = [np.array([a]) for a in args]    # each parameter's value in memory
        argv = (ctypes.c_void_p * len(holders))(*[h.ctypes.data for h in holders])
        if self.lib.dsq_emu_launch(self.index[kernel], grid, block, argv) != 0:
            raise RuntimeError(f"{kernel} <<<{grid}, {block}>>>: {self.lib.dsq_emu_error().decode()}")

    def run(self, launches) -> None:
        for launch in launches:
            self.launch(launch.kernel, launch.grid, launch.block, launch.args)
