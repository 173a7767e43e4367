// CPU kernels of the ZeRO++ communication ops (swizzle_quantize, quantized_reduction and their
// LoCo variants): argument structs, the per-tier loops of zeropp.inc, dispatch tables.
#pragma once
#include "kernels.hpp"

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
  void (*swizzle[dsq::NUM_DTYPES][3])(const SwizzleArgs&);
  void (*reduce[3])(const ReduceArgs&);
};

#define DSQ_CPU_LOOPS "zeropp.inc"
#include "isa.inc"

inline const ZeroppKernels& zeropp_for_this_cpu() {
  static const PerIsa<ZeroppKernels> k = for_each_isa<ZeroppKernels>(DSQ_CPU_TABLES(zeropp_kernels));
  return k.get();
}

inline void swizzle_quantize(int dtype, const SwizzleArgs& a) {
  zeropp_for_this_cpu().swizzle[dtype][per_index(a.bits)](a);
}

inline void quantized_reduction(const ReduceArgs& a) { zeropp_for_this_cpu().reduce[per_index(a.bits)](a); }

}  // namespace dsq_cpu
