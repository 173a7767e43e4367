"""Quantized checkpoints in safetensors files: :func:`save_quantized` / :func:`load_quantized`
(dicts of NumPy arrays, no torch needed), and the streaming :func:`quantize_file` /
:func:`dequantize_file` behind ``dsquant quantize-checkpoint`` / ``dequantize-checkpoint``.
The file schema (version 1) is documented in docs/checkpoints.md."""
from .files import TensorReport, dequantize_file, format_report, load_quantized, quantize_file, save_quantized
from .schema import FORMATS, SCHEMA_VERSION, Policy

__all__ = ["FORMATS", "SCHEMA_VERSION", "Policy", "TensorReport", "dequantize_file", "format_report",
           "load_quantized", "quantize_file", "save_quantized"]
