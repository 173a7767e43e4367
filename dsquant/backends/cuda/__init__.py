"""The CUDA backend: ``kernels`` (instantiations, NVRTC, cubin cache; no GPU needed), ``launch``
(launch plans; pure Python), ``device`` (CuPy: modules per device, streams, the registered
implementations; imported on the first GPU array only), ``cli`` (``python -m dsquant kernels``)."""
