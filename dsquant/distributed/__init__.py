"""ZeRO++ qgZ, the quantized hierarchical all-to-all reduce (``qgz``), on an engine per transport:
``mpi`` (mpi4py, host arrays) and ``nccl`` (``cupy.cuda.nccl``, GPU arrays). Import it explicitly
(``import dsquant.distributed``); importing it imports neither MPI nor CuPy."""
from .mpi import MPIEngine
from .nccl import NCCLEngine
from .qgz import REDUCTIONS, LocoState, all_to_all_quant_reduce, default_groups

__all__ = ["REDUCTIONS", "LocoState", "MPIEngine", "NCCLEngine", "all_to_all_quant_reduce", "default_groups"]
