"""The CPU backend: OpenMP kernels (``_cpu``) compiled from the shared numerics headers, driven by
``host``, which registers the CPU implementations when the registry first needs them."""
import os

# OpenMP's worker threads wait for the next parallel region asleep, not spinning: where the CPUs
# are shared, spinning workers take CPU time from the threads doing the work (measured on the
# 2-vCPU machine at load 9.5, 2^20 elements: 2 threads ran at 0.01 of a copy spinning, 0.2-0.35
# asleep, docs/threading.md). libgomp reads this once, when it loads: it has no effect if another
# library loaded it first, and a value the user set is kept (OMP_WAIT_POLICY=ACTIVE to spin).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
