"""ZeRO++ qgZ: a quantized, hierarchical all-to-all reduce of gradients over MPI (mpi4py, host
arrays) or NCCL (``cupy.cuda.nccl``, GPU arrays).

``all_to_all_quant_reduce`` is DeepSpeed's ``all_to_all_quant_reduce``
(``deepspeed/runtime/comm/coalesced_collectives.py``) on an existing communicator: every rank
passes the same list of tensors (its own gradients); every rank gets back ITS partition of the
reduction. The ranks are ``nodes x devices_per_node``, rank ``r = node * devices_per_node +
local``. Per tensor (docs/zeropp.md has the diagram):

1. ``swizzle_quantize`` into ``groups`` groups (4 bits by default): the data for each local
   device becomes one contiguous slab;
2. intra-node all-to-all of the codes and params (each local device gets its slab from every
   local peer);
3. ``quantized_reduction``: the float32 sum of the local slabs, requantized;
4. inter-node all-to-all among the ranks with the same local index;
5. dequantize and combine the ``nodes`` partial sums in float32.

``reduce`` says what comes back: ``"deepspeed"`` (DeepSpeed's meaning: the SUM over the local
devices and the MEAN over nodes, i.e. the sum over all ranks divided by ``nodes``), ``"sum"``
(the sum over all ranks) or ``"mean"`` (divided by the number of ranks).

Only the all-to-all depends on where the arrays live: an *engine* (:class:`MPIEngine` for host
arrays, :class:`NCCLEngine` for GPU arrays) provides it, everything else is shared. Import this
module explicitly (``import dsquant.distributed``); importing it imports neither MPI nor CuPy.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

from ..core import checks, formats
from ..core.arrays import ArrayT
from ..ops import integer, zeropp
from ..ops._args import take
from ..interop.operand import Operand
from .mpi import MPIEngine
from .nccl import NCCLEngine

Engine = MPIEngine | NCCLEngine     # what moves the bytes (comm= may also be a plain mpi4py communicator)

REDUCTIONS: dict[str, Callable[[int, int], int]] = {
    "deepspeed": lambda nodes, world: nodes, "sum": lambda nodes, world: 1, "mean": lambda nodes, world: world}
DEFAULT_GROUP_SIZE = 2048      # largest group size the default group count aims for
MIN_GROUP_SIZE = 64            # ... unless groups would be smaller (params would cost more than codes)


class LocoState:
    """LoCo error-feedback buffers kept between calls, one pair per tensor position.

    The intra-node buffer holds one float32 per gradient element (in swizzled order), the
    inter-node one, one per element of the reduced slab (``numel / devices_per_node``), in the
    engine's memory (NumPy arrays for MPI, CuPy arrays on the GPU for NCCL). DeepSpeed
    stores them 8-bit quantized between steps and resets them every ``reset_T`` parameters; here
    they stay float32 until :meth:`reset`.
    """

    def __init__(self, beta: float = 0.8) -> None:
        self.beta = checks.unit_float(beta, "beta (the error feedback's decay)")
        self.buffers: dict[int, tuple[Any, Any]] = {}

    def reset(self) -> None:
        """Forget every buffer (the next call starts from zero error)."""
        self.buffers.clear()

    def pair(self, index: int, numel: int, engine: Engine) -> tuple[Any, Any]:
        """The (intra-node, inter-node) buffers of tensor `index` with `numel` elements, made
        (zeros, in `engine`'s memory) on first use or when the size changed."""
        pair = self.buffers.get(index)
        if pair is None or pair[0].size != numel:
            pair = (engine.zeros(numel), engine.zeros(numel // engine.devices_per_node))
            self.buffers[index] = pair
        return pair


def default_groups(numel: int, world: int) -> int:
    """The default group count: a multiple of `world` dividing `numel`, with the largest groups of
    at most DEFAULT_GROUP_SIZE elements, unless that would make them smaller than MIN_GROUP_SIZE
    (then the smallest groups above DEFAULT_GROUP_SIZE)."""
    m = numel // world
    target = -(-m // DEFAULT_GROUP_SIZE)                 # fewest groups per partition
    divisors: set[int] = set()
    for i in range(1, math.isqrt(m) + 1):
        if m % i == 0:
            divisors.update((i, m // i))
    c = min(d for d in divisors if d >= target)
    if m // c < MIN_GROUP_SIZE and target > 1:
        c = max(d for d in divisors if d < target)
    return world * c


# By where the arrays are (in host memory: True, on a GPU: False): the engine type, and how to
# build one from a plain mpi4py communicator.
_ENGINES: dict[bool, tuple[type[Engine], Callable[[Any, int, int], Engine]]] = {
    True: (MPIEngine, MPIEngine), False: (NCCLEngine, NCCLEngine.from_mpi)}


def all_to_all_quant_reduce(tensors: Sequence[ArrayT], *, comm: Any, nodes: int, devices_per_node: int, bits: int = 4,
                            groups: int | None = None, symmetric: bool = True, reduce: str = "deepspeed",
                            loco: LocoState | None = None) -> list[ArrayT]:
    """Quantized hierarchical all-to-all reduce (ZeRO++ qgZ); every rank gets its own partition.

    Args:
        tensors: list of arrays, the same shapes on every rank, all in host memory (NumPy, torch
            CPU, JAX CPU) or all on this rank's GPU (CuPy, torch CUDA, JAX GPU); float16, bfloat16,
            float32, float64. Each tensor's ``numel`` must be a multiple of
            ``nodes * devices_per_node * 8 / bits``.
        comm: an mpi4py communicator of ``nodes * devices_per_node`` ranks, or an engine:
            :class:`MPIEngine` (host arrays) or :class:`NCCLEngine` (GPU arrays). A plain
            communicator builds the engine the arrays need on every call (for GPU arrays, NCCL
            communicators through :meth:`NCCLEngine.from_mpi`): build it once instead.
        nodes: nodes of the hierarchy; rank ``r`` is local device ``r % devices_per_node`` of node
            ``r // devices_per_node``.
        devices_per_node: devices on each node.
        bits: code width of both quantization stages (DeepSpeed: 4).
        groups: groups per tensor (a multiple of the rank count dividing ``numel``); default
            :func:`default_groups` (groups of at most 2048 elements).
        symmetric: symmetric (DeepSpeed) or asymmetric quantization.
        reduce: ``"deepspeed"`` (sum over local devices, mean over nodes), ``"sum"`` or ``"mean"``.
        loco: a :class:`LocoState` for LoCo error feedback (the buffers persist in it), or None.
            Not for JAX arrays (the buffers are updated in place).

    Returns:
        A list with, for each tensor, partition ``rank`` (``numel / ranks`` elements, flat, in the
        order of the flattened tensor) of the reduction, in the tensor's framework, dtype and device.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
    if loco is not None and not isinstance(loco, LocoState):
        raise TypeError(f"loco must be a dsquant.distributed.LocoState or None, got {type(loco).__name__}")
    bits = checks.bits(bits, formats.INT_BITS)
    ops = [take(t, f"tensors[{i}]") for i, t in enumerate(tensors)]
    if not ops:
        return []
    on_cpu = ops[0].on_cpu
    if any(op.on_cpu != on_cpu for op in ops):
        raise BufferError("tensors must be all in host memory or all on the GPU")
    kind, build = _ENGINES[on_cpu]
    engine = comm if isinstance(comm, (MPIEngine, NCCLEngine)) else build(comm, nodes, devices_per_node)
    if not isinstance(engine, kind):
        where = "host memory" if on_cpu else "a GPU"
        raise BufferError(f"the tensors are in {where}: pass a {kind.__name__} (or a plain communicator), "
                          f"not a {type(engine).__name__}")
    elsewhere = [i for i, op in enumerate(ops) if not on_cpu and op.tensor.device_id != engine.device]
    if elsewhere:
        raise BufferError(f"tensors[{elsewhere[0]}] is on GPU {ops[elsewhere[0]].tensor.device_id}, the engine's "
                          f"communicator on GPU {engine.device}")
    if (engine.nodes, engine.devices_per_node) != (nodes, devices_per_node):
        raise ValueError(f"the engine was built for {engine.nodes} nodes x {engine.devices_per_node} devices, "
                         f"not {nodes} x {devices_per_node}")
    return [_reduce_one(t, op, i, engine, bits, groups, symmetric, reduce, loco)
            for i, (t, op) in enumerate(zip(tensors, ops))]


def _reduce_one(t: Any, op: Operand, index: int, engine: Engine, bits: int, groups: int | None,
                symmetric: bool, reduce: str, loco: LocoState | None) -> Any:
    """One tensor through the qgZ pipeline; `engine` only moves the bytes."""
    nodes, dpn = engine.nodes, engine.devices_per_node
    world = nodes * dpn
    n = op.tensor.numel
    per = formats.codes_per_byte(bits)
    if n % (world * per):
        raise ValueError(f"tensors[{index}] has {n} elements: every rank gets numel / {world} of them as whole "
                         f"bytes of {bits}-bit codes, so numel must be a multiple of {world * per}")
    g = default_groups(n, world) if groups is None else checks.groups(groups, n)
    if g % world:
        raise ValueError(f"groups={g} must be a multiple of the {world} ranks")
    with engine.ordered(op):
        return _pipeline(t, op, index, engine, bits, g, symmetric, reduce, loco)


def _pipeline(t: Any, op: Operand, index: int, engine: Engine, bits: int, g: int, symmetric: bool,
              reduce: str, loco: LocoState | None) -> Any:
    nodes, dpn = engine.nodes, engine.devices_per_node
    layout: dict[str, Any] = dict(symmetric=symmetric, nodes=nodes, devices_per_node=dpn)
    if loco is None:
        q, p = zeropp.swizzle_quantize(t, g, bits, **layout)
    else:
        err_intra, err_inter = loco.pair(index, op.tensor.numel, engine)
        view = op.adapter.shared_view(err_intra)
        if view is None:
            raise TypeError(f"LoCo updates its error buffers in place, as NumPy, CuPy or torch arrays; "
                            f"tensors[{index}] is a {op.framework} array")
        q, p = zeropp.loco_swizzle_quantize(t, view, loco.beta, g, bits, **layout)
    # intra-node: local device d gets slab d of every local peer
    q = engine.alltoall(engine.intra, engine.native(q))
    p = engine.alltoall(engine.intra, engine.native(p))
    reduction: dict[str, Any] = dict(symmetric=symmetric, devices_per_node=dpn)
    if loco is None:
        q, p = zeropp.quantized_reduction(q, p, g, g // dpn, bits, **reduction)
    else:
        q, p = zeropp.loco_quantized_reduction(q, p, err_inter, loco.beta, g, g // dpn, bits, **reduction)
    # inter-node: each node's partial sum of my partition, from my peers
    q = engine.alltoall(engine.inter, q)
    p = engine.alltoall(engine.inter, p)
    partial = integer.dequantize(q, p, bits).reshape(nodes, -1)
    total = partial[0].copy()
    for m in range(1, nodes):                      # node order: the same bits on every rank
        total += partial[m]
    divisor = REDUCTIONS[reduce](nodes, nodes * dpn)
    if divisor != 1:
        total /= np.float32(divisor)
    return op.adapter.cast_float32(total, op.tensor.dtype_name)
