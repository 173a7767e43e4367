// Generated from dsquant/core/fp_formats.py by `python -m dsquant.core.fp_formats`: do not edit.
#pragma once
namespace dsq {
enum FpNonFinite : int { FP_FINITE_ONLY = 0, FP_NAN_ONLY = 1, FP_IEEE = 2 };
enum FpScaling : int { FP_ABSMAX = 0, FP_MX = 1, FP_NVFP4 = 2 };
enum FpMxRounding : int { FP_MX_FLOOR = 0, FP_MX_RCEIL = 1 };
struct FpE4M3 {  // e4m3: max 448.0, min subnormal 0.001953125
  static constexpr int CODE = 0, BITS = 8, E = 4, M = 3, BIAS = 7, EMAX = 8;
  static constexpr FpNonFinite NONFINITE = FP_NAN_ONLY;
  static constexpr uint32_t MAX_CODE = 0x7eu, NAN_CODE = 0x7fu, INF_CODE = 0x7fu;
  static constexpr float MAX = 448.0f;
};
struct FpE5M2 {  // e5m2: max 57344.0, min subnormal 1.52587890625e-05
  static constexpr int CODE = 1, BITS = 8, E = 5, M = 2, BIAS = 15, EMAX = 15;
  static constexpr FpNonFinite NONFINITE = FP_IEEE;
  static constexpr uint32_t MAX_CODE = 0x7bu, NAN_CODE = 0x7eu, INF_CODE = 0x7cu;
  static constexpr float MAX = 57344.0f;
};
struct FpE3M2 {  // e3m2: max 28.0, min subnormal 0.0625
  static constexpr int CODE = 2, BITS = 6, E = 3, M = 2, BIAS = 3, EMAX = 4;
  static constexpr FpNonFinite NONFINITE = FP_FINITE_ONLY;
  static constexpr uint32_t MAX_CODE = 0x1fu, NAN_CODE = 0x0u, INF_CODE = 0x1fu;
  static constexpr float MAX = 28.0f;
};
struct FpE2M3 {  // e2m3: max 7.5, min subnormal 0.125
  static constexpr int CODE = 3, BITS = 6, E = 2, M = 3, BIAS = 1, EMAX = 2;
  static constexpr FpNonFinite NONFINITE = FP_FINITE_ONLY;
  static constexpr uint32_t MAX_CODE = 0x1fu, NAN_CODE = 0x0u, INF_CODE = 0x1fu;
  static constexpr float MAX = 7.5f;
};
struct FpE2M1 {  // e2m1: max 6.0, min subnormal 0.5
  static constexpr int CODE = 4, BITS = 4, E = 2, M = 1, BIAS = 1, EMAX = 2;
  static constexpr FpNonFinite NONFINITE = FP_FINITE_ONLY;
  static constexpr uint32_t MAX_CODE = 0x7u, NAN_CODE = 0x0u, INF_CODE = 0x7u;
  static constexpr float MAX = 6.0f;
};
constexpr int NUM_FP_FORMATS = 5;
}  // namespace dsq
// X(code, format struct) for every element format, in code order
#define DSQ_FOR_EACH_FP_FORMAT(X) X(0, FpE4M3) X(1, FpE5M2) X(2, FpE3M2) X(3, FpE2M3) X(4, FpE2M1)
