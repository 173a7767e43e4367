"""The MPI engine of the qgZ collective: all-to-all over mpi4py sub-communicators, host arrays."""
from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from ..core import checks
from ..interop.operand import Operand


class MPIEngine:
    """The intra-node and inter-node sub-communicators of an mpi4py communicator.

    Build it once and pass it as ``comm`` to avoid splitting the communicator on every call.
    """

    device: int | None = None         # the GPU of the arrays: none, they are in host memory

    def __init__(self, comm: Any, nodes: int, devices_per_node: int) -> None:
        nodes = checks.positive(nodes, "nodes")
        dpn = checks.positive(devices_per_node, "devices_per_node")
        size = comm.Get_size()
        if size != nodes * dpn:
            raise ValueError(f"the communicator has {size} ranks but nodes * devices_per_node = {nodes} * {dpn} = "
                             f"{nodes * dpn}")
        self.comm, self.nodes, self.devices_per_node = comm, nodes, dpn
        self.rank = comm.Get_rank()
        node, local = divmod(self.rank, dpn)
        self.intra = comm.Split(color=node, key=local)    # the devices of my node
        self.inter = comm.Split(color=local, key=node)    # my peers (same local index) on every node

    @staticmethod
    def native(a: Any) -> np.ndarray[Any, Any]:
        """A NumPy view of an int8/float32 host array returned by the ops."""
        return a if isinstance(a, np.ndarray) else np.from_dlpack(a)

    @staticmethod
    def zeros(numel: int) -> np.ndarray[Any, Any]:
        """A float32 zero buffer in host memory (LoCo error feedback)."""
        return np.zeros(numel, np.float32)

    @staticmethod
    def ordered(like: Operand) -> contextlib.AbstractContextManager[None]:
        """Nothing to arrange: host work is ordered by program order."""
        return contextlib.nullcontext()          # host work is ordered by program order

    def alltoall(self, sub: Any, send: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Equal-chunk all-to-all of a contiguous array over sub-communicator `sub`."""
        recv = np.empty_like(send)
        sub.Alltoall(send, recv)
        return recv
