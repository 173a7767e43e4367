"""A user's script that must type-check under `mypy --strict` (.ci/run checks it): results keep
the input's array type, so the NumPy-typed lines below are checked, not Any."""
import numpy as np
from numpy.typing import NDArray

import dsquant
from dsquant import distributed
from dsquant.compat import deepspeed as ds_ops

w: NDArray[np.float16] = np.zeros((4, 8), dtype=np.float16)
w_q: NDArray[np.float16] = dsquant.fake_quantize(w, groups=4, bits=4, symmetric=False)
w_sr = dsquant.fake_quantize(w, 4, 8, stochastic=True, seed=0, out=w_q)
dsquant.ds_quantizer(w, groups=4, bit_num=8, asym=True)

q, params = dsquant.quantize(w, groups=4, bits=4)
codes: NDArray[np.int8] = q
scales: NDArray[np.float32] = params
back = dsquant.dequantize(q, params, bits=4, dtype="float16")
print(back.shape, w_sr.dtype, codes.nbytes, scales.shape)

sq, sp = dsquant.swizzle_quantize(w, 8, bits=8, nodes=2, devices_per_node=2)
r, rp = dsquant.quantized_reduction(sq, sp, 8, 4, bits=8, devices_per_node=2)
reduced: NDArray[np.int8] = r

dsquant.manual_seed(7)
facts: dict[str, object] = dsquant.info()
version: str = dsquant.__version__

q2, p2 = ds_ops.quantize(w, 4, 8, ds_ops.Symmetric)
half = ds_ops.ds_quantize_fp16(w, 4, 8)
print(reduced.size, rp.size, facts["version"], version, q2.shape, p2.shape, half.dtype)


def my_partition(grads: list[NDArray[np.float32]], comm: object) -> NDArray[np.float32]:
    """Not called here (it needs MPI ranks): type-checked only."""
    return distributed.all_to_all_quant_reduce(grads, comm=comm, nodes=1, devices_per_node=2, bits=8)[0]


# groupings and the QuantizedTensor result (issue 14)
res = dsquant.quantize(w, block_size=(1, 4), bits=4)
r_codes: NDArray[np.int8] = res.codes
r_params: NDArray[np.float32] = res.params
r_bits: int = res.bits
r_block: tuple[int, ...] | None = res.block_size
r_back: NDArray[np.float16] = dsquant.dequantize(res)
w_axis: NDArray[np.float16] = dsquant.fake_quantize(w, axis=1, bits=4)
print(r_codes.shape, r_params.shape, r_bits, r_block, r_back.shape, w_axis.shape, res.grouping.grid, res.dtype)
