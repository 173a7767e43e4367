// CPU kernels of minifloat quantization (fp_quantize, fp_dequantize, fake_fp_quantize): argument
// structs, the twice-compiled loops of fp.inc, dispatch tables. Every formula is in cuda/dsq_fp.cuh.
#pragma once
#include "kernels.hpp"
#include "dsq_fp.cuh"

namespace dsq_cpu {

using dsq::FpScale;

// fp_quantize (codes + scales) or, with `out`, fake_fp_quantize (values of the input dtype; codes
// and scales unused). n elements in `groups` groups; n is a multiple of the format's unit.
struct FpQuantArgs {
  const void* in;
  uint8_t* codes;          // n · bits / 8 bytes, LSB-first bit stream
  void* scales;            // absmax: float32 [groups]; mx, nvfp4: uint8 [groups]
  float* tensor_scale;     // nvfp4: float32 [1]
  void* out;               // fake: n elements of the input dtype, else null
  int64_t n, groups;
  int fmt, scaling, rounding;
  bool stochastic, saturate;
  uint64_t seed, offset;
  int threads;
};

// fp_dequantize: n values of the output dtype from codes and the scales of `groups` groups.
struct FpDequantArgs {
  const uint8_t* codes;
  const void* scales;
  const float* tensor_scale;
  void* out;
  int64_t n, groups;
  int fmt, scaling;
  int threads;
};

typedef void (*FpQuantFn)(const FpQuantArgs&);
typedef void (*FpDequantFn)(const FpDequantArgs&);

// quant[dtype][fmt][stochastic][fake], dequant[output dtype][fmt]
struct FpKernels {
  FpQuantFn quant[dsq::NUM_DTYPES][dsq::NUM_FP_FORMATS][2][2];
  FpDequantFn dequant[dsq::NUM_DTYPES][dsq::NUM_FP_FORMATS];
};

#define DSQ_CPU_LOOPS "fp.inc"
#include "isa.inc"

inline const FpKernels& fp_for_this_cpu() {
  static const PerIsa<FpKernels> k = for_each_isa<FpKernels>(DSQ_CPU_TABLES(fp_kernels));
  return k.get();
}

inline void fp_quantize(int dtype, const FpQuantArgs& a) {
  fp_for_this_cpu().quant[dtype][a.fmt][a.stochastic][a.out != nullptr](a);
}

inline void fp_dequantize(int dtype, const FpDequantArgs& a) {
  if (a.n == 0) return;
  fp_for_this_cpu().dequant[dtype][a.fmt](a);
}

}  // namespace dsq_cpu
