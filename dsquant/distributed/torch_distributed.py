"""The torch.distributed engine of the qgZ collective: ``all_to_all_single`` over sub-groups of a
process group (gloo for CPU tensors, NCCL for CUDA tensors), torch tensors."""
from __future__ import annotations

import contextlib
from typing import Any

from ..core import checks
from ..interop.operand import Operand


class TorchEngine:
    """The intra-node and inter-node sub-groups of a ``torch.distributed`` process group.

    Build it on every rank, in the same order (``torch.distributed.new_group`` is collective), and
    pass it as ``comm``. Ranks are numbered within `group` (default: the world): rank ``r`` is
    local device ``r % devices_per_node`` of node ``r // devices_per_node``.

    Args:
        nodes, devices_per_node: the hierarchy; ``nodes * devices_per_node`` must be the group's size.
        group: the process group (default: the default group). Its backend must support
            ``all_to_all_single`` for the tensors' device (gloo: CPU, NCCL: CUDA).
    """

    def __init__(self, nodes: int, devices_per_node: int, group: Any = None):
        import torch.distributed as dist
        self.nodes = checks.positive(nodes, "nodes")
        self.devices_per_node = dpn = checks.positive(devices_per_node, "devices_per_node")
        world = dist.get_world_size(group)
        if world != self.nodes * dpn:
            raise ValueError(f"the process group has {world} ranks but nodes * devices_per_node = {self.nodes} * "
                             f"{dpn} = {self.nodes * dpn}")
        self.rank = dist.get_rank(group)
        ranks = dist.get_process_group_ranks(group) if group is not None else list(range(world))
        node, local = divmod(self.rank, dpn)
        self.device = None           # the tensors' device is whatever torch's collectives accept
        self.intra: Any = None
        self.inter: Any = None
        for m in range(self.nodes):    # every rank creates every sub-group, in the same order
            sub = dist.new_group([ranks[m * dpn + d] for d in range(dpn)])
            if m == node:
                self.intra = sub
        for d in range(dpn):
            sub = dist.new_group([ranks[m * dpn + d] for m in range(self.nodes)])
            if d == local:
                self.inter = sub
        self._dist = dist
        self._zeros_device: Any = "cpu"

    @staticmethod
    def native(a: Any) -> Any:
        """A torch view of an int8/float32 array returned by the ops."""
        import torch
        return a if isinstance(a, torch.Tensor) else torch.from_dlpack(a)

    def zeros(self, numel: int) -> Any:
        """A float32 zero buffer on the engine's device (LoCo error feedback)."""
        import torch
        return torch.zeros(numel, dtype=torch.float32, device=self._zeros_device)

    def ordered(self, like: Operand) -> contextlib.nullcontext[None]:
        """Torch's collectives and the ops (on torch tensors) queue on torch's current stream;
        the LoCo buffers go where the tensors are."""
        import torch
        if not isinstance(like.obj, torch.Tensor):
            raise TypeError(f"the torch.distributed engine exchanges torch tensors, got a {like.framework} array")
        self._zeros_device = like.obj.device
        return contextlib.nullcontext()

    def alltoall(self, sub: Any, send: Any) -> Any:
        """Equal-chunk all-to-all of a contiguous tensor over sub-group `sub`."""
        import torch
        recv = torch.empty_like(send)
        self._dist.all_to_all_single(recv, send, group=sub)
        return recv
