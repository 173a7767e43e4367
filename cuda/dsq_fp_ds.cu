// dsq_fp_ds.cu — DeepSpeed's FP quantizer records on the GPU (dsquant.compat.deepspeed_fp), in
// DeepSpeed's code space or an OCP one (Space: dsq_fp_ds.cuh). Every formula comes from
// dsq_fp_ds.cuh and dsq_fp.cuh, which the CPU loops compile too. Codes and scales
// are addressed with a byte stride per group (whole records, or DeepSpeed's split meta tensors).
//
// * fp_ds_quant: a block per group (grid-stride over groups): the block reduces the group's
//   absmax (order keys, exact), thread 0 writes the scale bytes, then every thread encodes whole
//   code units (U = 1, 2, 4, 2 elements for 8, 4, 6, 12 bits: whole bytes, never across groups),
//   so each byte has one writer. Any group size; the barrier loop is uniform across the block.
// * fp_ds_dequant: a thread per output unit (grid-stride), optionally through selected rows.
#include "dsq_blocks.cuh"
#include "dsq_fp_ds.cuh"
#include "dsq_philox.cuh"

namespace dsq {

template <class Space, class Fmt>
__global__ void __launch_bounds__(DSQ_MAX_THREADS)
fp_ds_quant(const typename Fmt::storage* in, uint8_t* codes, uint8_t* scales, int64_t n, int64_t S,
            int64_t code_stride, int64_t scale_stride, int bits, int mantissa, bool stochastic, uint64_t seed,
            uint64_t offset) {
  typedef typename Fmt::compute C;
  __shared__ Stats<Fmt> partial[32];
  const Space space(bits, mantissa);
  const int U = ds_fp_unit(bits), ub = ds_fp_unit_bytes(bits);
  const int64_t groups = n / S;
  for (int64_t g = blockIdx.x; g < groups; g += gridDim.x) {
    const typename Fmt::storage* x = in + g * S;
    Stats<Fmt> st = stats_empty<Fmt>();
    for (int64_t i = threadIdx.x; i < S; i += blockDim.x) stats_add(st, x[i]);
    team_reduce<Fmt, true>(st, (int)blockDim.x, partial);
    const typename Space::template Params<C> p = space.params(stats_absmax(st));
    if (threadIdx.x == 0) ds_fp_store_scale(scales + g * scale_stride, 0, space.stored(p));
    uint8_t* out = codes + g * code_stride;
    for (int64_t k = (int64_t)threadIdx.x * U; k < S; k += (int64_t)blockDim.x * U) {
      uint32_t packed = 0;
      for (int j = 0; j < U; ++j) {
        const int64_t i = g * S + k + j;
        const float u = stochastic ? uniform_at(seed, offset + (uint64_t)i) : 0.0f;
        packed = ds_fp_pack(packed, space.encode(Fmt::load(x[k + j]), p, stochastic, u), j, bits);
      }
      ds_fp_store_bytes(out + k / U * ub, packed, ub);
    }
  }
}

template <class Space, class Fmt>
__global__ void __launch_bounds__(DSQ_MAX_THREADS)
fp_ds_dequant(const uint8_t* codes, const uint8_t* scales, typename Fmt::storage* out, const int64_t* rows,
              int64_t n, int64_t S, int64_t code_stride, int64_t scale_stride, int64_t row_elems, int bits,
              int mantissa) {
  const Space space(bits, mantissa);
  const int U = ds_fp_unit(bits), ub = ds_fp_unit_bytes(bits);
  const int64_t units = n / U;
  for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < units; j += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = j * U, src = ds_fp_source(t, rows, row_elems);
    const int64_t g = src / S, k = src % S;
    const uint32_t packed = ds_fp_load_bytes(codes + g * code_stride + k / U * ub, ub);
    const float scale = ds_fp_load_scale(scales + g * scale_stride, 0);
    for (int i = 0; i < U; ++i) out[t + i] = space.template decode<Fmt>(ds_fp_unpack(packed, i, bits), scale);
  }
}

}  // namespace dsq
