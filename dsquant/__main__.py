"""``python -m dsquant <command>``: info, bench (CPU benchmark), kernels (CUDA compile checks),
gpu-bench (GPU benchmark). Commands are looked up in a table; each module exposes main(argv)."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "info": ("dsquant._info", "print what this installation can use (JSON)"),
    "bench": ("dsquant.bench.cpu", "CPU benchmark table: throughput vs numpy.copyto and NumPy"),
    "kernels": ("dsquant.backends.cuda.cli", "compile every CUDA kernel (--compile-only: no GPU), report registers/spills"),
    "qgz-bench": ("dsquant.bench.zeropp", "qgZ all-to-all reduce on MPI vs Allreduce (run under mpiexec)"),
    "gpu-bench": ("dsquant.bench.gpu", "GPU benchmark table: throughput vs a CuPy device-to-device copy"),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m dsquant <command> [options]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<10} {text}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    return importlib.import_module(COMMANDS[name][0]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
