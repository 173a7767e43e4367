"""ZeRO++ qgZ: a quantized, hierarchical all-to-all reduce of gradients over MPI (mpi4py).

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

Import this module explicitly (``import dsquant.distributed``); importing it imports no MPI. CPU
arrays only for now: the CuPy/NCCL engine is not written yet (see docs/zeropp.md).
"""
from __future__ import annotations

import math
import sys

import numpy as np

from . import _interop, _ops, _zeropp

REDUCTIONS = {"deepspeed": lambda nodes, world: nodes, "sum": lambda nodes, world: 1,
              "mean": lambda nodes, world: world}
DEFAULT_GROUP_SIZE = 2048      # largest group size the default group count aims for
MIN_GROUP_SIZE = 64            # ... unless groups would be smaller (params would cost more than codes)


class MPIEngine:
    """The intra-node and inter-node sub-communicators of an mpi4py communicator.

    Build it once and pass it as ``comm`` to avoid splitting the communicator on every call.
    """

    def __init__(self, comm, nodes: int, devices_per_node: int):
        nodes = _zeropp._positive(nodes, "nodes")
        dpn = _zeropp._positive(devices_per_node, "devices_per_node")
        size = comm.Get_size()
        if size != nodes * dpn:
            raise ValueError(f"the communicator has {size} ranks but nodes * devices_per_node = {nodes} * {dpn} = "
                             f"{nodes * dpn}")
        self.comm, self.nodes, self.devices_per_node = comm, nodes, dpn
        self.rank = comm.Get_rank()
        node, local = divmod(self.rank, dpn)
        self.intra = comm.Split(color=node, key=local)    # the devices of my node
        self.inter = comm.Split(color=local, key=node)    # my peers (same local index) on every node

    def alltoall(self, sub, send: np.ndarray) -> np.ndarray:
        """Equal-chunk all-to-all of a contiguous array over sub-communicator `sub`."""
        recv = np.empty_like(send)
        sub.Alltoall(send, recv)
        return recv


class LocoState:
    """LoCo error-feedback buffers kept between calls, one pair per tensor position.

    The intra-node buffer holds one float32 per gradient element (in swizzled order), the
    inter-node one, one per element of the reduced slab (``numel / devices_per_node``). DeepSpeed
    stores them 8-bit quantized between steps and resets them every ``reset_T`` parameters; here
    they stay float32 until :meth:`reset`.
    """

    def __init__(self, beta: float = 0.8):
        self.beta = _zeropp._check_beta(beta)
        self.buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def reset(self) -> None:
        self.buffers.clear()

    def pair(self, index: int, numel: int, devices_per_node: int):
        pair = self.buffers.get(index)
        if pair is None or pair[0].size != numel:
            pair = (np.zeros(numel, np.float32), np.zeros(numel // devices_per_node, np.float32))
            self.buffers[index] = pair
        return pair


def default_groups(numel: int, world: int) -> int:
    """The default group count: a multiple of `world` dividing `numel`, with the largest groups of
    at most DEFAULT_GROUP_SIZE elements, unless that would make them smaller than MIN_GROUP_SIZE
    (then the smallest groups above DEFAULT_GROUP_SIZE)."""
    m = numel // world
    target = -(-m // DEFAULT_GROUP_SIZE)                 # fewest groups per partition
    divisors = set()
    for i in range(1, math.isqrt(m) + 1):
        if m % i == 0:
            divisors.update((i, m // i))
    c = min(d for d in divisors if d >= target)
    if m // c < MIN_GROUP_SIZE and target > 1:
        c = max(d for d in divisors if d < target)
    return world * c


def _to_caller(values: np.ndarray, like: _interop.Operand):
    """float32 `values` in the caller's framework and dtype (rounded to nearest even)."""
    dtype = like.tensor.dtype_name
    if like.framework == _interop.TORCH:
        torch = sys.modules["torch"]
        return torch.from_numpy(values).to(getattr(torch, dtype))
    if like.framework == _interop.JAX:
        return sys.modules["jax.numpy"].asarray(values.astype(_numpy_dtype(dtype)))
    return values.astype(_numpy_dtype(dtype))


def _numpy_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes
        return ml_dtypes.bfloat16
    return np.dtype(name)


def _host(a) -> np.ndarray:
    """A NumPy view of an int8/float32 host array returned by the ops."""
    return a if isinstance(a, np.ndarray) else np.from_dlpack(a)


def all_to_all_quant_reduce(tensors, *, comm, nodes, devices_per_node, bits=4, groups=None, symmetric=True,
                            reduce="deepspeed", loco=None):
    """Quantized hierarchical all-to-all reduce (ZeRO++ qgZ); every rank gets its own partition.

    Args:
        tensors: list of host arrays (NumPy, torch CPU, JAX CPU; float16, bfloat16, float32,
            float64), the same shapes on every rank. Each tensor's ``numel`` must be a multiple of
            ``nodes * devices_per_node * 8 / bits``.
        comm: an mpi4py communicator of ``nodes * devices_per_node`` ranks, or an
            :class:`MPIEngine` built from one.
        nodes, devices_per_node: the hierarchy; rank ``r`` is local device ``r % devices_per_node``
            of node ``r // devices_per_node``.
        bits: code width of both quantization stages (DeepSpeed: 4).
        groups: groups per tensor (a multiple of the rank count dividing ``numel``); default
            :func:`default_groups` (groups of at most 2048 elements).
        symmetric: symmetric (DeepSpeed) or asymmetric quantization.
        reduce: ``"deepspeed"`` (sum over local devices, mean over nodes), ``"sum"`` or ``"mean"``.
        loco: a :class:`LocoState` for LoCo error feedback (the buffers persist in it), or None.

    Returns:
        A list with, for each tensor, partition ``rank`` (``numel / ranks`` elements, flat, in the
        order of the flattened tensor) of the reduction, in the tensor's framework and dtype.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
    engine = comm if isinstance(comm, MPIEngine) else MPIEngine(comm, nodes, devices_per_node)
    if (engine.nodes, engine.devices_per_node) != (nodes, devices_per_node):
        raise ValueError(f"the engine was built for {engine.nodes} nodes x {engine.devices_per_node} devices, "
                         f"not {nodes} x {devices_per_node}")
    if loco is not None and not isinstance(loco, LocoState):
        raise TypeError(f"loco must be a dsquant.distributed.LocoState or None, got {type(loco).__name__}")
    bits = _ops.check_bits(bits, _ops.INT_MIN_BITS, _ops.INT_MAX_BITS)
    return [_reduce_one(t, i, engine, bits, groups, symmetric, reduce, loco) for i, t in enumerate(tensors)]


def _reduce_one(t, index, engine: MPIEngine, bits, groups, symmetric, reduce, loco):
    nodes, dpn = engine.nodes, engine.devices_per_node
    world = nodes * dpn
    op = _ops._intake(t, f"tensors[{index}]")
    if not op.on_cpu:
        raise BufferError(f"tensors[{index}] is not in host memory; the MPI engine reduces CPU arrays "
                          f"(the NCCL engine for GPU arrays is not available yet)")
    n = op.tensor.numel
    per = _ops.codes_per_byte(bits)
    if n % (world * per):
        raise ValueError(f"tensors[{index}] has {n} elements: every rank gets numel / {world} of them as whole "
                         f"bytes of {bits}-bit codes, so numel must be a multiple of {world * per}")
    g = default_groups(n, world) if groups is None else _ops.check_groups(groups, n)
    if g % world:
        raise ValueError(f"groups={g} must be a multiple of the {world} ranks")
    layout = dict(symmetric=symmetric, nodes=nodes, devices_per_node=dpn)
    if loco is None:
        q, p = _zeropp.swizzle_quantize(t, g, bits, **layout)
    else:
        err_intra, err_inter = loco.pair(index, n, dpn)
        if op.framework == _interop.TORCH:            # the same memory, in the input's framework
            err_intra = sys.modules["torch"].from_numpy(err_intra)
        elif op.framework != _interop.NUMPY:
            raise TypeError(f"LoCo keeps its error buffers as NumPy or torch arrays; tensors[{index}] is a "
                            f"{op.framework} array")
        q, p = _zeropp.loco_swizzle_quantize(t, err_intra, loco.beta, g, bits, **layout)
    # intra-node: local device d gets slab d of every local peer
    q = engine.alltoall(engine.intra, _host(q))
    p = engine.alltoall(engine.intra, _host(p))
    reduction = dict(symmetric=symmetric, devices_per_node=dpn)
    if loco is None:
        q, p = _zeropp.quantized_reduction(q, p, g, g // dpn, bits, **reduction)
    else:
        q, p = _zeropp.loco_quantized_reduction(q, p, err_inter, loco.beta, g, g // dpn, bits, **reduction)
    # inter-node: each node's partial sum of my partition, from my peers
    q = engine.alltoall(engine.inter, q)
    p = engine.alltoall(engine.inter, p)
    partial = _ops.dequantize(q, p, bits).reshape(nodes, -1)
    total = partial[0].copy()
    for m in range(1, nodes):                      # node order: the same bits on every rank
        total += partial[m]
    divisor = REDUCTIONS[reduce](nodes, world)
    if divisor != 1:
        total /= np.float32(divisor)
    return _to_caller(total, op)
