// CPU loops of DeepSpeed's FP quantizer format (cuda/dsq_fp_ds.cuh holds every formula).
// Codes and scales are addressed separately, with a byte stride per group, so the same loops
// read and write whole records (codes at record + 0, scale at record + S·bits/8, stride R) and
// split layouts (codes [G, S·bits/8], scales [G, 4]: DeepSpeed's meta-tensor path).
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "dsq_fp.cuh"
#include "dsq_fp_ds.cuh"
#include "dsq_math.cuh"
#include "dsq_philox.cuh"
#include "kernels.hpp"   // team_size, kChunk

namespace dsq_cpu {

struct FpDsQuantArgs {
  const void* in;
  uint8_t* codes;        // group g's code bytes at codes + g * code_stride
  uint8_t* scales;       // group g's float32 scale (little-endian bytes) at scales + g * scale_stride
  int64_t n, group_size, code_stride, scale_stride;
  int bits, mantissa;
  int space;             // index of the code space (dsq::DSQ_FOR_EACH_FP_DS_SPACE)
  bool stochastic;
  uint64_t seed, offset;
  int threads;
};

struct FpDsDequantArgs {
  const uint8_t* codes;
  const uint8_t* scales;
  void* out;
  const int64_t* rows;   // selective dequantization: source row of each output row, else nullptr
  int64_t n, group_size, code_stride, scale_stride, row_elems;
  int bits, mantissa;
  int space;
  int threads;
};

template <class Space, class Fmt> void fp_ds_quantize_typed(const FpDsQuantArgs& a) {
  typedef typename Fmt::storage T;
  typedef typename Fmt::compute C;
  const Space space(a.bits, a.mantissa);
  const int U = dsq::ds_fp_unit(a.bits), ub = dsq::ds_fp_unit_bytes(a.bits);
  const T* in = static_cast<const T*>(a.in);
  const int64_t S = a.group_size, groups = a.n / S;
#pragma omp parallel for schedule(dynamic, std::max<int64_t>(1, kChunk / S)) num_threads(team_size(a.n, a.threads))
  for (int64_t g = 0; g < groups; ++g) {
    const T* x = in + g * S;
    dsq::Stats<Fmt> st = dsq::stats_empty<Fmt>();
    for (int64_t i = 0; i < S; ++i) dsq::stats_add(st, x[i]);
    const typename Space::template Params<C> p = space.params(dsq::stats_absmax(st));
    dsq::ds_fp_store_scale(a.scales + g * a.scale_stride, 0, space.stored(p));
    uint8_t* out = a.codes + g * a.code_stride;
    for (int64_t k = 0; k < S; k += U) {
      uint32_t packed = 0;
      for (int j = 0; j < U; ++j) {
        const int64_t i = g * S + k + j;
        const float u = a.stochastic ? dsq::uniform_at(a.seed, a.offset + (uint64_t)i) : 0.0f;
        const uint32_t code = space.encode(Fmt::load(x[k + j]), p, a.stochastic, u);
        packed = dsq::ds_fp_pack(packed, code, j, a.bits);
      }
      dsq::ds_fp_store_bytes(out + k / U * ub, packed, ub);
    }
  }
}

template <class Space, class Fmt> void fp_ds_dequantize_typed(const FpDsDequantArgs& a) {
  typedef typename Fmt::storage T;
  const Space space(a.bits, a.mantissa);
  const int U = dsq::ds_fp_unit(a.bits), ub = dsq::ds_fp_unit_bytes(a.bits);
  T* out = static_cast<T*>(a.out);
  const int64_t S = a.group_size, units = a.n / U;
#pragma omp parallel for schedule(dynamic, std::max<int64_t>(1, kChunk / U)) num_threads(team_size(a.n, a.threads))
  for (int64_t j = 0; j < units; ++j) {
    const int64_t t = j * U, src = dsq::ds_fp_source(t, a.rows, a.row_elems);
    const int64_t g = src / S, k = src % S;   // k is a multiple of U: units never cross groups
    const uint32_t packed = dsq::ds_fp_load_bytes(a.codes + g * a.code_stride + k / U * ub, ub);
    const float scale = dsq::ds_fp_load_scale(a.scales + g * a.scale_stride, 0);
    for (int i = 0; i < U; ++i) out[t + i] = space.template decode<Fmt>(dsq::ds_fp_unpack(packed, i, a.bits), scale);
  }
}

// Dispatch tables by [code space][dsq::DType].
typedef void (*FpDsQuantFn)(const FpDsQuantArgs&);
typedef void (*FpDsDequantFn)(const FpDsDequantArgs&);
template <class Space> struct FpDsTables {
#define DSQ_FP_DS_QUANT_ENTRY(code, Fmt) &fp_ds_quantize_typed<Space, dsq::Fmt>,
#define DSQ_FP_DS_DEQUANT_ENTRY(code, Fmt) &fp_ds_dequantize_typed<Space, dsq::Fmt>,
  static constexpr FpDsQuantFn quant[dsq::NUM_DTYPES] = {DSQ_FOR_EACH_DTYPE(DSQ_FP_DS_QUANT_ENTRY)};
  static constexpr FpDsDequantFn dequant[dsq::NUM_DTYPES] = {DSQ_FOR_EACH_DTYPE(DSQ_FP_DS_DEQUANT_ENTRY)};
#undef DSQ_FP_DS_QUANT_ENTRY
#undef DSQ_FP_DS_DEQUANT_ENTRY
};
#define DSQ_FP_DS_SPACE_QUANT(i, Space) FpDsTables<Space>::quant,
#define DSQ_FP_DS_SPACE_DEQUANT(i, Space) FpDsTables<Space>::dequant,
static const FpDsQuantFn* const kFpDsQuant[dsq::NUM_FP_DS_SPACES] = {DSQ_FOR_EACH_FP_DS_SPACE(DSQ_FP_DS_SPACE_QUANT)};
static const FpDsDequantFn* const kFpDsDequant[dsq::NUM_FP_DS_SPACES] = {
    DSQ_FOR_EACH_FP_DS_SPACE(DSQ_FP_DS_SPACE_DEQUANT)};
#undef DSQ_FP_DS_SPACE_QUANT
#undef DSQ_FP_DS_SPACE_DEQUANT

inline void fp_ds_quantize(int dtype, const FpDsQuantArgs& a) {
  if (a.n == 0) return;
  kFpDsQuant[a.space][dtype](a);
}
inline void fp_ds_dequantize(int dtype, const FpDsDequantArgs& a) {
  if (a.n == 0) return;
  kFpDsDequant[a.space][dtype](a);
}

}  // namespace dsq_cpu
