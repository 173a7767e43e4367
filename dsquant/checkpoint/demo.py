"""``dsquant demo-checkpoint OUT.safetensors``: a small MLP checkpoint (float16, a few MB) whose
weights have the statistics of trained transformer MLPs, for trying quantize-checkpoint on."""
from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import numpy as np

from ..core.missing import MissingDependency
from .files import SAFETENSORS


def _weight(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    # Trained weights are not Gaussian: heavier tails (Student's t, 5 degrees of freedom, scaled to
    # unit variance), a spread of row scales, and a few input channels with much larger weights
    # (the outlier features of large language models) that set the range of every block they cross.
    w = rng.standard_t(5, size=(rows, cols)) * math.sqrt(3 / 5) / math.sqrt(cols)
    w *= rng.lognormal(0.0, 0.3, size=(rows, 1))
    w[:, rng.choice(cols, size=max(1, cols // 200), replace=False)] *= 4
    return w.astype(np.float16)


def demo_tensors(layers: int = 2, width: int = 512, hidden: int = 1536, classes: int = 16,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """A residual MLP's state dict: per layer ``norm.weight`` (LayerNorm gain), ``up`` and ``down``
    (weight [out, in] and bias, as torch.nn.Linear), then ``head.weight`` [classes, width]."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for i in range(layers):
        tensors[f"layers.{i}.norm.weight"] = (1 + 0.05 * rng.standard_normal(width)).astype(np.float16)
        tensors[f"layers.{i}.up.weight"] = _weight(rng, hidden, width)
        tensors[f"layers.{i}.up.bias"] = (0.02 * rng.standard_normal(hidden)).astype(np.float16)
        tensors[f"layers.{i}.down.weight"] = _weight(rng, width, hidden)
        tensors[f"layers.{i}.down.bias"] = (0.02 * rng.standard_normal(width)).astype(np.float16)
    tensors["head.weight"] = _weight(rng, classes, width)
    return tensors


def main(argv: Sequence[str] | None = None, prog: str = "dsquant demo-checkpoint") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=(
        "Write a small MLP checkpoint (float16, a few MB) whose weights have the statistics of trained "
        "transformer MLPs (heavy tails, outlier input channels), to try quantize-checkpoint on."))
    parser.add_argument("dst", metavar="OUT.safetensors")
    parser.add_argument("--layers", type=int, default=2, help="residual MLP blocks (default 2)")
    parser.add_argument("--width", type=int, default=512, help="model width (default 512; hidden: 3x)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tensors = demo_tensors(args.layers, args.width, 3 * args.width, seed=args.seed)
    try:
        from safetensors.numpy import save_file
    except ImportError:
        raise MissingDependency(f"writing safetensors files needs the safetensors package: {SAFETENSORS}") from None
    save_file(tensors, args.dst, metadata={"generator": f"dsquant demo-checkpoint --seed {args.seed}"})
    total = sum(t.nbytes for t in tensors.values())
    print(f"{args.dst}: {len(tensors)} float16 tensors of a {args.layers}-block residual MLP "
          f"(width {args.width}), {total} bytes")
    return 0
