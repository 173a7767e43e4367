// dsq_static.cu — integer quantization with params given by the caller (static or calibrated
// scales, dsquant.quantize(x, params=...)): no statistics, so every byte of codes is independent.
// One thread per code byte (grid-stride), each reading the params of its codes' groups (a byte
// can hold codes of two groups when the group size is not a multiple of the codes per byte).
// The formulas are dsq_math.cuh's (int_params_given, int_code, code_to_field), as on the CPU.
#include "dsq_blocks.cuh"

namespace dsq {

template <class Fmt, bool Symmetric, int Per>
__global__ void __launch_bounds__(DSQ_MAX_THREADS)
int_quant_given(const typename Fmt::storage* in, const float* params, uint8_t* q, int64_t n, int64_t S,
                int bits) {
  typedef typename Fmt::compute C;
  const int64_t bytes = n / Per;
  for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < bytes; j += (int64_t)gridDim.x * blockDim.x) {
    uint32_t byte = 0;
#pragma unroll
    for (int k = 0; k < Per; ++k) {
      const int64_t e = j * Per + k, g = e / S;
      const IntParams<C> p = int_params_given<C>(params[Symmetric ? g : 2 * g], Symmetric ? 0.0f : params[2 * g + 1],
                                                 bits, Symmetric);
      const int32_t code = int_code<Fmt>(in[e], p);
      byte |= Per == 1 ? (uint32_t)code & 0xffu : code_to_field(code, Per, k);
    }
    q[j] = (uint8_t)byte;
  }
}

}  // namespace dsq
