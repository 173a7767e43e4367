"""``dsquant <command>`` (or ``python -m dsquant <command>``): info, bench (CPU benchmark), kernels
(CUDA compile checks), qgz-bench (the qgZ collective on MPI), gpu-bench (GPU benchmark),
quantize-checkpoint / dequantize-checkpoint / demo-checkpoint (safetensors checkpoints).
Commands are looked up in a table; each module exposes main(argv, prog) with its own argparse."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "info": ("dsquant._info", "print what this installation can use (JSON)"),
    "bench": ("dsquant.bench.cpu", "CPU benchmark table: throughput vs numpy.copyto and NumPy (--quick: seconds)"),
    "kernels": ("dsquant.backends.cuda.cli",
                "compile every CUDA kernel (--compile-only: no GPU), report registers/spills"),
    "qgz-bench": ("dsquant.bench.zeropp", "qgZ all-to-all reduce on MPI vs Allreduce (run under mpiexec)"),
    "gpu-bench": ("dsquant.bench.gpu", "GPU benchmark table: throughput vs a CuPy device-to-device copy"),
    # safetensors checkpoints (docs/checkpoints.md)
    "quantize-checkpoint": ("dsquant.checkpoint.quantize_cli",
                            "quantize a .safetensors file tensor by tensor, print the error table"),
    "dequantize-checkpoint": ("dsquant.checkpoint.dequantize_cli", "the inverse: a plain .safetensors file"),
    "demo-checkpoint": ("dsquant.checkpoint.demo", "write a small MLP checkpoint to try quantize-checkpoint on"),
}


def _parser(prog: str) -> argparse.ArgumentParser:
    from ._info import __version__
    listing = "\n".join(f"  {name:<21} {text}" for name, (_, text) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="dsquant: DeepSpeed's quantizer rebuilt without torch.",
        epilog=f"commands:\n{listing}\n\n`{prog} <command> --help` describes a command's options.")
    parser.add_argument("--version", action="version", version=f"dsquant {__version__}")
    parser.add_argument("command", nargs="?", choices=COMMANDS, metavar="command",
                        help="one of: " + ", ".join(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's options")
    return parser


def main(argv=None, prog: str = "dsquant") -> int:
    """Run one command; a missing optional dependency or launcher ends in one line, not a traceback."""
    from .core.missing import MissingDependency
    parser = _parser(prog)
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    command = f"{prog} {args.command}"
    try:
        return importlib.import_module(COMMANDS[args.command][0]).main(args.args, prog=command)
    except MissingDependency as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(prog="python -m dsquant"))
