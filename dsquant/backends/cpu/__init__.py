"""The CPU backend: OpenMP kernels (``_cpu``) compiled from the shared numerics headers, driven by
``host``, which registers the CPU implementations when the registry first needs them."""
