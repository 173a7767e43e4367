"""Backends: implementations of the operations per device, registered with ``dsquant.core.registry``.
They fill buffers and never import the front end (``dsquant.ops``)."""
