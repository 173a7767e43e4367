"""``dsquant dequantize-checkpoint IN.safetensors OUT.safetensors``: the inverse of
quantize-checkpoint, a plain safetensors file of the dequantized tensors, tensor by tensor."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..core import dtypes
from .files import dequantize_file


def main(argv: Sequence[str] | None = None, prog: str = "dsquant dequantize-checkpoint") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=(
        "Write the tensors of a dsquant quantized checkpoint, dequantized, to a plain safetensors "
        "file: the original names, shapes and dtypes (torch, JAX, NumPy ... load it as any other)."))
    parser.add_argument("src", metavar="IN.safetensors")
    parser.add_argument("dst", metavar="OUT.safetensors")
    parser.add_argument("--dtype", choices=dtypes.NAMES, default=None,
                        help="dtype of the dequantized tensors (default: each tensor's original dtype)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    args = parser.parse_args(argv)
    try:
        reports = dequantize_file(args.src, args.dst, dtype=args.dtype, progress=False if args.no_progress else None)
    except (OSError, ValueError, TypeError) as exc:    # a missing file, not a dsquant file, a newer schema
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    before, after = sum(r.bytes_before for r in reports), sum(r.bytes_after for r in reports)
    print(f"{args.src} -> {args.dst}: {len(reports)} tensors, {sum(r.stored_as != 'raw' for r in reports)} "
          f"dequantized; tensor bytes {before} -> {after}; file {os.path.getsize(args.dst)} bytes")
    return 0
