"""dsquant: DeepSpeed's quantizer rebuilt without torch.

Group-wise fake quantization and integer quantization for NumPy, CuPy, PyTorch and JAX arrays,
with one set of numerics shared by the CPU and CUDA paths (bit-identical by design; verified by
emulation, a GPU run is owed).
Importing dsquant imports none of torch, jax or cupy.
"""
from ._info import __version__, info

try:
    from .checkpoint import load_quantized, save_quantized
    from .core.grouping import Grouping
    from .ops.fake import ds_quantizer, fake_quantize, manual_seed
    from .ops.fp import fake_fp_quantize, fp_dequantize, fp_quantize
    from .ops.integer import choose_params, dequantize, quantize
    from .ops.quantized import QuantizedTensor
    from .ops.zeropp import loco_quantized_reduction, loco_swizzle_quantize, quantized_reduction, swizzle_quantize
except ImportError:
    from ._unbuilt import unbuilt_error
    error = unbuilt_error()               # None when the extensions are there: then the error is real
    if error is None:
        raise
    raise error from None

__all__ = ["Grouping", "QuantizedTensor", "__version__", "choose_params", "dequantize", "ds_quantizer",
           "fake_fp_quantize", "fake_quantize", "fp_dequantize", "fp_quantize", "info", "load_quantized",
           "loco_quantized_reduction", "loco_swizzle_quantize", "manual_seed", "quantize", "quantized_reduction",
           "save_quantized", "swizzle_quantize"]
