// CPU kernels of the ZeRO++ communication ops (swizzle_quantize, quantized_reduction and their
// LoCo variants): argument structs, the twice-compiled loops of _cpu_zeropp.inc, dispatch tables.
#pragma once
#include "_cpu_kernels.hpp"

namespace dsq_cpu {

// swizzle_quantize: n input elements in `groups` groups, written in swizzled group order.
// LoCo when err is not null: err holds n float32/float16/bfloat16 elements in OUTPUT order.
struct SwizzleArgs {
  const void* in;
  uint8_t* q;        // ceil(n / per) bytes
  float* params;     // [groups, symmetric ? 1 : 2], output group order
  void* err;
  int err_dtype;
  float beta;
  int64_t n, groups, pipe, nodes, dpn;
  int bits;
  bool symmetric;
  int threads;
};

// quantized_reduction: `devices` slabs of n values each (codes q_in, params_in [in_groups, 1|2])
// summed into n values requantized in `groups` groups. LoCo when err is not null (n elements).
struct ReduceArgs {
  const uint8_t* q_in;
  const float* params_in;
  uint8_t* q;
  float* params;
  void* err;
  int err_dtype;
  float beta;
  int64_t n, in_groups, groups, devices;
  int bits;
  bool symmetric, half_accumulate;
  int threads;
};

struct ZeroppKernels {
  void (*swizzle[4][3])(const SwizzleArgs&);
  void (*reduce[3])(const ReduceArgs&);
};

namespace base {
#include "_cpu_zeropp.inc"
}  // namespace base

#ifdef DSQ_CPU_HAVE_AVX2
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
#define DSQ_CPU_F16C 1
#include "_cpu_zeropp.inc"
#undef DSQ_CPU_F16C
}  // namespace avx2
#pragma GCC pop_options
#endif

inline const ZeroppKernels& zeropp_for_this_cpu() {
#ifdef DSQ_CPU_HAVE_AVX2
  static const ZeroppKernels k = use_avx2() ? avx2::zeropp_kernels() : base::zeropp_kernels();
#else
  static const ZeroppKernels k = base::zeropp_kernels();
#endif
  return k;
}

inline void swizzle_quantize(int dtype, const SwizzleArgs& a) {
  zeropp_for_this_cpu().swizzle[dtype][per_index(a.bits)](a);
}

inline void quantized_reduction(const ReduceArgs& a) { zeropp_for_this_cpu().reduce[per_index(a.bits)](a); }

}  // namespace dsq_cpu
