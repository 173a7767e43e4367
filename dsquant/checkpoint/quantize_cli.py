"""``dsquant quantize-checkpoint IN.safetensors OUT.safetensors``: quantize a safetensors checkpoint
tensor by tensor (memory bounded by the largest tensor), print the per-tensor error table."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .files import format_report, quantize_file
from .schema import Policy


def main(argv: Sequence[str] | None = None, prog: str = "dsquant quantize-checkpoint") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=(
        "Quantize the float tensors of a safetensors file to integer codes with per-block scales "
        "(a self-describing file: docs/checkpoints.md), one tensor at a time, and print each "
        "tensor's relative error and bytes. A progress bar (tqdm, when installed) shows on a terminal."))
    parser.add_argument("src", metavar="IN.safetensors")
    parser.add_argument("dst", metavar="OUT.safetensors")
    parser.add_argument("--bits", type=int, default=8, help="2..8 (default 8; 8, 4 and 2 are packed)")
    parser.add_argument("--block-size", type=int, default=128,
                        help="elements per group along the last axis (default 128); tensors whose last "
                             "dimension it does not divide are kept as they are")
    parser.add_argument("--asymmetric", action="store_true", help="scale and offset per block (default: symmetric)")
    parser.add_argument("--include", action="append", default=[], metavar="PATTERN",
                        help="quantize only tensors whose name matches (fnmatch, e.g. '*.weight'; repeatable)")
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                        help="keep tensors whose name matches as they are (repeatable)")
    parser.add_argument("--skip-small", type=int, default=0, metavar="N",
                        help="keep tensors of fewer than N elements as they are (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    args = parser.parse_args(argv)
    try:
        policy = Policy(args.bits, args.block_size, not args.asymmetric, tuple(args.include), tuple(args.exclude),
                        args.skip_small)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        reports = quantize_file(args.src, args.dst, policy, progress=False if args.no_progress else None)
    except (OSError, ValueError, TypeError) as exc:    # a missing, unreadable or already quantized file
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    scheme = "asymmetric" if args.asymmetric else "symmetric"
    print(f"# {args.src} -> {args.dst}: int{args.bits} {scheme}, blocks of {args.block_size} along the last axis\n")
    print(format_report(reports, os.path.getsize(args.src), os.path.getsize(args.dst)))
    return 0
