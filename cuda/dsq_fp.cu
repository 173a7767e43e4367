// dsq_fp.cu — minifloat quantization on the GPU: dsquant.fp_quantize, fp_dequantize and
// fake_fp_quantize. Every formula (codes, scales, packing, values) comes from dsq_fp.cuh, the
// header the CPU path compiles too, so GPU and CPU bytes are identical. This file only decides
// which thread touches which element and which byte. Launch plans: dsquant/backends/cuda/launch.py.
//
// * fp_tensor_amax (NVFP4 only): the largest finite magnitude of the whole tensor, as an order key
//   merged with atomicMax into a key cleared by stats_clear.
// * fp_group_scales: a warp per group reduces its largest finite magnitude (or reads it from the
//   keys stats_chunks left for groups too large for one warp) and writes the group's stored scale
//   and, into O(groups) scratch, the multiplier and dequantization factor of its elements.
// * fp_encode_units: a thread per unit (the codes of a run of whole bytes: 1 for FP8, 4 for FP6,
//   2 for FP4), so every code byte has one writer even where a unit holds elements of two groups.
//   Fake quantization writes the dequantized values instead.
// * fp_dequant_units: a thread per unit.
// All indices are 64-bit and loops grid-stride; no kernel has a barrier.
#include "dsq_blocks.cuh"
#include "dsq_fp.cuh"
#include "dsq_philox.cuh"

namespace dsq {

template <class Fmt>
__global__ void __launch_bounds__(DSQ_MAX_THREADS)
fp_tensor_amax(const typename Fmt::storage* in, typename Fmt::key* key, int64_t n) {
  typedef typename Fmt::key K;
  K a = 0;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const typename Fmt::storage v = in[i];
    const K k = Fmt::finite(v) ? Fmt::abs_key(v) : (K)0;
    a = k > a ? k : a;
  }
  for (int o = 16; o > 0; o >>= 1) {
    const K b = __shfl_xor_sync(0xffffffffu, a, o);
    a = b > a ? b : a;
  }
  if ((threadIdx.x & 31) == 0) atomicMax(key, a);
}

// NVFP4's tensor encode scale from the tensor's key (1 for other scalings, or without a key).
template <class Fmt> __device__ __forceinline__ float fp_tensor_encode(const typename Fmt::key* tensor_key) {
  return tensor_key ? nvfp4_tensor_encode(to_float_saturated((double)Fmt::from_abs_key(*tensor_key))) : 1.0f;
}

// Warp w of the grid handles groups w, w + warps, ... (blockDim.x a multiple of 32). keys: the
// absmax key of group g at keys[3g] (stats_chunks), or null to reduce here. scales: float32
// (absmax) or uint8 codes (mx, nvfp4), or null (fake quantization stores none).
template <class Fmt, class Fp>
__global__ void __launch_bounds__(DSQ_MAX_THREADS)
fp_group_scales(const typename Fmt::storage* in, const typename Fmt::key* keys, const typename Fmt::key* tensor_key,
                void* scales, float* tensor_scale, typename Fmt::compute* mul, float* dq, int64_t S, int64_t groups,
                int scaling, int rounding) {
  typedef typename Fmt::key K;
  typedef typename Fmt::compute C;
  const int lane = (int)threadIdx.x & 31;
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
  const float s_enc = fp_tensor_encode<Fmt>(tensor_key);
  const float t_scale = 1.0f / s_enc;
  if (tensor_scale && blockIdx.x == 0 && threadIdx.x == 0) *tensor_scale = t_scale;
  for (int64_t g = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; g < groups; g += warps) {
    K a = 0;
    if (keys) {
      a = keys[3 * g];
    } else {
      for (int64_t i = lane; i < S; i += 32) {
        const typename Fmt::storage v = in[g * S + i];
        const K k = Fmt::finite(v) ? Fmt::abs_key(v) : (K)0;
        a = k > a ? k : a;
      }
      for (int o = 16; o > 0; o >>= 1) {
        const K b = __shfl_xor_sync(0xffffffffu, a, o);
        a = b > a ? b : a;
      }
    }
    if (lane == 0) {
      const FpScale<C> s = fp_scale<Fp, C>(Fmt::from_abs_key(a), scaling, rounding, s_enc, t_scale);
      mul[g] = s.mul;
      dq[g] = s.dq;
      if (scales) {
        if (scaling == FP_ABSMAX) static_cast<float*>(scales)[g] = s.stored;
        else static_cast<uint8_t*>(scales)[g] = (uint8_t)s.code;
      }
    }
  }
}

// Thread t of the grid handles units t, t + threads, ...; n is a multiple of the unit.
template <class Fmt, class Fp, bool Stochastic, bool Fake>
__global__ void __launch_bounds__(DSQ_MAX_THREADS)
fp_encode_units(const typename Fmt::storage* in, uint8_t* codes, typename Fmt::storage* out,
                const typename Fmt::compute* mul, const float* dq, int64_t n, int64_t S, bool saturate, uint64_t seed,
                uint64_t offset) {
  typedef typename Fmt::compute C;
  constexpr int per = FpUnit<Fp>::CODES;
  const int64_t units = n / per;
  for (int64_t u = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; u < units; u += (int64_t)gridDim.x * blockDim.x) {
    uint32_t c[per];
#pragma unroll
    for (int k = 0; k < per; ++k) {
      const int64_t i = u * per + k;
      const int64_t g = i / S;
      const typename Fmt::storage raw = in[i];
      const float r = Stochastic ? uniform_at(seed, offset + (uint64_t)i) : 0.0f;
      if (Fake) {
        FpScale<C> s;
        s.mul = mul[g];
        s.dq = dq[g];
        out[i] = fp_fake_element<Fp, Fmt>(raw, s, saturate, Stochastic, r);
      } else {
        c[k] = fp_encode<Fp, C>(Fmt::load(raw) * mul[g], saturate, Stochastic, r);
      }
    }
    if (!Fake) fp_store_unit<Fp>(codes + u * FpUnit<Fp>::BYTES, fp_pack<Fp>(c));
  }
}

// Dequantization: scales as fp_group_scales stores them, tensor_scale (nvfp4) or null.
template <class Fp, class Fmt>
__global__ void __launch_bounds__(DSQ_MAX_THREADS)
fp_dequant_units(const uint8_t* codes, const void* scales, const float* tensor_scale, typename Fmt::storage* out,
                 int64_t n, int64_t S, int scaling) {
  constexpr int per = FpUnit<Fp>::CODES;
  const int64_t units = n / per;
  for (int64_t u = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; u < units; u += (int64_t)gridDim.x * blockDim.x) {
    const uint32_t w = fp_load_unit<Fp>(codes + u * FpUnit<Fp>::BYTES);
#pragma unroll
    for (int k = 0; k < per; ++k) {
      const int64_t i = u * per + k;
      const int64_t g = i / S;
      float d;
      if (scaling == FP_ABSMAX) {
        d = fp_dq_absmax(static_cast<const float*>(scales)[g]);
      } else {
        const uint8_t sc = static_cast<const uint8_t*>(scales)[g];
        d = scaling == FP_MX ? fp_dq_mx(sc) : fp_dq_nvfp4(sc, *tensor_scale);
      }
      out[i] = fp_dequant_element<Fp, Fmt>(fp_unpack<Fp>(w, k), d);
    }
  }
}

}  // namespace dsq
