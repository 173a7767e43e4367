"""The NCCL engine of the qgZ collective: grouped send/recv over one world communicator
(``cupy.cuda.nccl``), GPU arrays, on the caller's stream."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..core import checks
from ..interop.operand import Operand


class NCCLEngine:
    """One NCCL communicator over all ``nodes * devices_per_node`` ranks, on this rank's GPU.

    NCCL has no all-to-all: each sub-group's all-to-all is one NCCL group of a send and a receive
    per peer (itself included) over the world communicator, so no sub-communicators are needed.
    It runs on the caller's current stream (torch's for torch tensors, CuPy's otherwise) and does
    not synchronize the host.

    Args:
        nodes: nodes of the hierarchy, as for :func:`all_to_all_quant_reduce`.
        devices_per_node: devices on each node.
        unique_id: ``cupy.cuda.nccl.get_unique_id()`` of rank 0, the same on every rank (send it
            with your launcher, or use :meth:`from_mpi`).
        rank: this rank, ``0 <= rank < nodes * devices_per_node``.
        device: the GPU of this rank's arrays (default: CuPy's current device).
    """

    def __init__(self, nodes: int, devices_per_node: int, unique_id: Any, rank: int, device: int | None = None) -> None:
        from cupy.cuda import Device, nccl
        self.nodes = checks.positive(nodes, "nodes")
        self.devices_per_node = dpn = checks.positive(devices_per_node, "devices_per_node")
        world = self.nodes * dpn
        self.rank = checks.int_arg(rank, "rank")
        if not 0 <= self.rank < world:
            raise ValueError(f"rank must be in [0, {world}) for {self.nodes} nodes x {dpn} devices, got {rank}")
        self.device = Device().id if device is None else checks.int_arg(device, "device")
        self._nccl = nccl
        with Device(self.device):               # a communicator belongs to the device current at its creation
            self.comm = nccl.NcclCommunicator(world, unique_id, self.rank)
        node, local = divmod(self.rank, dpn)
        self.intra = [node * dpn + d for d in range(dpn)]            # world ranks, in all-to-all order
        self.inter = [m * dpn + local for m in range(self.nodes)]

    @classmethod
    def from_mpi(cls, comm: Any, nodes: int, devices_per_node: int, device: int | None = None) -> NCCLEngine:
        """Build the engine on every rank of an mpi4py communicator (rank 0's unique id broadcast)."""
        from cupy.cuda import nccl
        world = comm.Get_size()
        if world != nodes * devices_per_node:
            raise ValueError(f"the communicator has {world} ranks but nodes * devices_per_node = "
                             f"{nodes} * {devices_per_node} = {nodes * devices_per_node}")
        uid = comm.bcast(nccl.get_unique_id() if comm.Get_rank() == 0 else None, root=0)
        return cls(nodes, devices_per_node, uid, comm.Get_rank(), device)

    @staticmethod
    def native(a: Any) -> Any:
        """A CuPy view of an int8/float32 GPU array returned by the ops."""
        import cupy
        return a if isinstance(a, cupy.ndarray) else cupy.from_dlpack(a)

    def zeros(self, numel: int) -> Any:
        """A float32 zero buffer on this rank's GPU (LoCo error feedback)."""
        import cupy
        with cupy.cuda.Device(self.device):
            return cupy.zeros(numel, np.float32)

    @contextlib.contextmanager
    def ordered(self, like: Operand) -> Iterator[None]:
        """The caller's device and current stream made CuPy's current ones, so that the ops (on
        CuPy arrays after the first exchange), the exchanges and the final sum all queue on the
        stream the caller's framework expects its work on."""
        import cupy
        from ..backends.cuda import device as cuda_backend
        with cupy.cuda.Device(self.device), cuda_backend.stream_of(like.adapter, self.device, like.obj):
            yield

    def alltoall(self, sub: list[int], send: Any) -> Any:
        """Equal-chunk all-to-all of a contiguous CuPy array among world ranks `sub`, as bytes, on
        CuPy's current stream (inside :meth:`ordered`)."""
        import cupy
        recv = cupy.empty_like(send)
        stream = cupy.cuda.get_current_stream().ptr
        chunk = send.nbytes // len(sub)
        nccl = self._nccl
        nccl.groupStart()
        for i, peer in enumerate(sub):
            self.comm.send(send.data.ptr + i * chunk, chunk, nccl.NCCL_INT8, peer, stream)
            self.comm.recv(recv.data.ptr + i * chunk, chunk, nccl.NCCL_INT8, peer, stream)
        nccl.groupEnd()
        return recv
