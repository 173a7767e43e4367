// static.hpp — integer quantization with params given by the caller (static or calibrated
// scales): no statistics, each code byte independent of the others, so the loop is split over
// bytes (a byte may hold codes of two groups). The formulas are dsq_math.cuh's, as in
// cuda/dsq_static.cu. A plain loop compiled once (not through isa.inc): it is no hot path of
// training, and the math it calls is the same always-inline scalar code.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "dsq_math.cuh"
#include "kernels.hpp"   // team_size, kChunk

namespace dsq_cpu {

struct IntQuantGivenArgs {
  const void* in;
  const float* params;   // [groups, symmetric ? 1 : 2]: 1/scale (the step) [, offset]
  uint8_t* q;            // n / per bytes
  int64_t n, groups;
  int bits;
  bool symmetric;
  int threads;
};

template <class Fmt> void int_quantize_given_typed(const IntQuantGivenArgs& a) {
  typedef typename Fmt::storage T;
  typedef typename Fmt::compute C;
  const T* in = static_cast<const T*>(a.in);
  const int per = dsq::int_codes_per_byte(a.bits);
  const int64_t S = a.n / a.groups, bytes = a.n / per, chunk = 1 << 14;
  const int64_t chunks = (bytes + chunk - 1) / chunk;
#pragma omp parallel for schedule(dynamic, 1) num_threads(team_size(a.n, a.threads))
  for (int64_t c = 0; c < chunks; ++c) {
    int64_t group = -1;
    dsq::IntParams<C> p{};
    for (int64_t j = c * chunk; j < std::min(bytes, (c + 1) * chunk); ++j) {
      uint32_t byte = 0;
      for (int k = 0; k < per; ++k) {
        const int64_t e = j * per + k, g = e / S;
        if (g != group) {
          group = g;
          p = dsq::int_params_given<C>(a.params[a.symmetric ? g : 2 * g], a.symmetric ? 0.0f : a.params[2 * g + 1],
                                       a.bits, a.symmetric);
        }
        const int32_t code = dsq::int_code<Fmt>(in[e], p);
        byte |= per == 1 ? (uint32_t)code & 0xffu : dsq::code_to_field(code, per, k);
      }
      a.q[j] = (uint8_t)byte;
    }
  }
}

typedef void (*IntQuantGivenFn)(const IntQuantGivenArgs&);
#define DSQ_INT_QUANT_GIVEN_ENTRY(code, Fmt) &int_quantize_given_typed<dsq::Fmt>,
static const IntQuantGivenFn kIntQuantGivenTable[dsq::NUM_DTYPES] = {DSQ_FOR_EACH_DTYPE(DSQ_INT_QUANT_GIVEN_ENTRY)};
#undef DSQ_INT_QUANT_GIVEN_ENTRY

inline void int_quantize_given(int dtype, const IntQuantGivenArgs& a) {
  if (a.n == 0) return;
  kIntQuantGivenTable[dtype](a);
}

}  // namespace dsq_cpu
