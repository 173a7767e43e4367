"""Benchmarks: ``cpu`` (``python -m dsquant bench``, with the ``integer`` and ``zeropp`` rows),
``zeropp`` (also ``qgz-bench`` under mpiexec), ``gpu`` (``python -m dsquant gpu-bench``)."""
