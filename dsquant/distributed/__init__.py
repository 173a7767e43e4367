"""ZeRO++ qgZ, the quantized hierarchical all-to-all reduce (``qgz``), on an engine per transport:
``mpi`` (mpi4py, host arrays), ``nccl`` (``cupy.cuda.nccl``, GPU arrays) and ``torch_distributed``
(torch tensors over a process group). Import it explicitly (``import dsquant.distributed``);
importing it imports none of MPI, CuPy and torch."""
from .mpi import MPIEngine
from .nccl import NCCLEngine
from .qgz import REDUCTIONS, LocoState, all_to_all_quant_reduce, default_groups
from .torch_distributed import TorchEngine

__all__ = ["REDUCTIONS", "LocoState", "MPIEngine", "NCCLEngine", "TorchEngine", "all_to_all_quant_reduce",
           "default_groups"]
