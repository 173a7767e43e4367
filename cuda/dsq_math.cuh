// dsq_math.cuh — every scalar formula of dsquant, compiled for the host (C++17, the CPU path) and
// for the device (NVRTC, the CUDA path). The CPU and GPU results are bit-identical because both
// sides run exactly these functions with IEEE arithmetic: no fast math, no FMA contraction
// (host -ffp-contract=off, NVRTC --fmad=false; fmaf is written where a fused op is meant), no
// flush-to-zero. The contract these functions implement is docs/numerics.md.
//
// Only integer/float operations that are exactly specified by IEEE 754 and C++ are used here
// (no rint/round/floor library calls whose inlining differs between compilers): rounding to an
// integer is done with the exact 1.5·2^23 adder trick (see round_half_even).
//
// Device fast paths (DSQ_GPU_ISA: the device pass of a CUDA compiler). The float16/bfloat16
// conversions use the one GPU instruction that computes the same IEEE result (round to nearest
// even, subnormals kept), and fake_element selects with `pick` instead of a ternary, because the
// portable forms cost several times the instructions (or a branch per element) and would make the
// 16-bit kernels bound by instruction issue instead of memory bandwidth. For every non-NaN input
// each fast path returns the host function's bits; for a NaN input both return a NaN, possibly
// with another payload, and no dsquant op lets a converted NaN reach its output (non-finite
// elements pass through as their stored bits, or are classified before any conversion).
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define DSQ_HD __host__ __device__ __forceinline__
#define DSQ_DEVICE_CODE 1
#if defined(__CUDA_ARCH__)
#define DSQ_GPU_ISA __CUDA_ARCH__
#endif
#else
#define DSQ_HD inline __attribute__((always_inline))
#endif

#if defined(__CUDACC_RTC__)
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
typedef int int32_t;
typedef long long int64_t;
typedef signed char int8_t;
typedef unsigned char uint8_t;
#else
#include <cmath>
#include <cstdint>
#endif

#include "dsq_dtypes.cuh"

namespace dsq {

// ---------------------------------------------------------------------------------------------
// Bit casts and storage formats. float16 and bfloat16 are stored as uint16_t on both sides, so
// the kernels need no cuda_fp16.h and the host needs no compiler half type.
// ---------------------------------------------------------------------------------------------
DSQ_HD uint32_t float_bits(float f) {
#ifdef DSQ_DEVICE_CODE
  return __float_as_uint(f);
#else
  return __builtin_bit_cast(uint32_t, f);
#endif
}
DSQ_HD float bits_float(uint32_t u) {
#ifdef DSQ_DEVICE_CODE
  return __uint_as_float(u);
#else
  return __builtin_bit_cast(float, u);
#endif
}
DSQ_HD uint64_t double_bits(double d) {
#ifdef DSQ_DEVICE_CODE
  return (uint64_t)__double_as_longlong(d);
#else
  return __builtin_bit_cast(uint64_t, d);
#endif
}

// IEEE binary16 -> binary32, exact (subnormals included).
DSQ_HD float half_to_float(uint16_t h) {
#ifdef DSQ_GPU_ISA
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
#else
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t em = h & 0x7fffu;
  if (em >= 0x7c00u) return bits_float(sign | 0x7f800000u | ((uint32_t)(em & 0x3ffu) << 13));
  if (em >= 0x0400u) return bits_float(sign | ((em << 13) + 0x38000000u));
  // subnormal or zero: em * 2^-24, exact in float
  float mag = (float)em * 5.9604644775390625e-08f;
  return bits_float(sign | float_bits(mag));
#endif
}

// binary32 -> binary16, round to nearest even; overflow to Inf, NaN stays NaN (quiet).
DSQ_HD uint16_t float_to_half(float f) {
#ifdef DSQ_GPU_ISA
  uint16_t h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
#else
  uint32_t x = float_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0u));
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to >= 65520: Inf
  if (ax < 0x38800000u) {
    // result is subnormal or zero: add 0.5 (in float) so the hardware float adder does the RNE
    // rounding at the 2^-24 quantum; the sum's low mantissa bits are the half subnormal.
    float mag = bits_float(ax) + 0.5f;
    return (uint16_t)(sign | (float_bits(mag) - 0x3f000000u));
  }
  uint32_t mant_odd = (ax >> 13) & 1u;
  ax += 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round to nearest even
  return (uint16_t)(sign | (ax >> 13));
#endif
}

DSQ_HD float bf16_to_float(uint16_t h) { return bits_float((uint32_t)h << 16); }

// binary32 -> bfloat16, round to nearest even; NaN stays a quiet NaN with its sign.
DSQ_HD uint16_t float_to_bf16(float f) {
#if defined(DSQ_GPU_ISA) && DSQ_GPU_ISA >= 800
  uint16_t h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
#else
  uint32_t x = float_bits(f);
  uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  uint32_t quiet_nan = (x >> 16) | 0x40u;
  return (uint16_t)((x & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
#endif
}

#ifdef DSQ_GPU_ISA
// c ? a : b as one select instruction, which the compiler cannot turn back into a branch.
DSQ_HD uint16_t pick(bool c, uint16_t a, uint16_t b) {
  uint16_t r;
  asm("{ .reg .pred p; setp.ne.u32 p, %3, 0; selp.b16 %0, %1, %2, p; }" : "=h"(r) : "h"(a), "h"(b), "r"((uint32_t)c));
  return r;
}
DSQ_HD float pick(bool c, float a, float b) {
  float r;
  asm("{ .reg .pred p; setp.ne.u32 p, %3, 0; selp.f32 %0, %1, %2, p; }" : "=f"(r) : "f"(a), "f"(b), "r"((uint32_t)c));
  return r;
}
DSQ_HD double pick(bool c, double a, double b) {
  double r;
  asm("{ .reg .pred p; setp.ne.u32 p, %3, 0; selp.f64 %0, %1, %2, p; }" : "=d"(r) : "d"(a), "d"(b), "r"((uint32_t)c));
  return r;
}
#endif

// ---------------------------------------------------------------------------------------------
// Element formats: how a stored element becomes the compute type and back, and its "order key"
// (an integer whose signed order equals the value order for every non-NaN value), used to reduce
// statistics without converting. Compute type is float for 16/32-bit formats, double for float64.
// ---------------------------------------------------------------------------------------------
// DType (DT_FLOAT16 ...) comes from dsq_dtypes.cuh, generated from dsquant/core/dtypes.py.

struct F16 {
  typedef uint16_t storage; typedef float compute; typedef int32_t key;
  static DSQ_HD float load(uint16_t v) { return half_to_float(v); }
  static DSQ_HD uint16_t store(float v) { return float_to_half(v); }
  static DSQ_HD bool finite(uint16_t v) { return (v & 0x7c00u) != 0x7c00u; }
  static DSQ_HD int32_t abs_key(uint16_t v) { return (int32_t)(v & 0x7fffu); }
  static DSQ_HD int32_t key_of(uint16_t v) { return (v & 0x8000u) ? -(int32_t)(v & 0x7fffu) - 1 : (int32_t)v; }
  static DSQ_HD float from_abs_key(int32_t k) { return half_to_float((uint16_t)k); }
  static DSQ_HD float from_key(int32_t k) { return half_to_float((uint16_t)(k < 0 ? ((-k - 1) | 0x8000) : k)); }
  static DSQ_HD float max_value() { return 65504.0f; }   // largest finite value, in the compute type
};
struct BF16 {
  typedef uint16_t storage; typedef float compute; typedef int32_t key;
  static DSQ_HD float load(uint16_t v) { return bf16_to_float(v); }
  static DSQ_HD uint16_t store(float v) { return float_to_bf16(v); }
  static DSQ_HD bool finite(uint16_t v) { return (v & 0x7f80u) != 0x7f80u; }
  static DSQ_HD int32_t abs_key(uint16_t v) { return (int32_t)(v & 0x7fffu); }
  static DSQ_HD int32_t key_of(uint16_t v) { return (v & 0x8000u) ? -(int32_t)(v & 0x7fffu) - 1 : (int32_t)v; }
  static DSQ_HD float from_abs_key(int32_t k) { return bf16_to_float((uint16_t)k); }
  static DSQ_HD float from_key(int32_t k) { return bf16_to_float((uint16_t)(k < 0 ? ((-k - 1) | 0x8000) : k)); }
  static DSQ_HD float max_value() { return 3.38953138925153547590e+38f; }   // 0x7f7f
};
struct F32 {
  typedef float storage; typedef float compute; typedef int32_t key;
  static DSQ_HD float load(float v) { return v; }
  static DSQ_HD float store(float v) { return v; }
  static DSQ_HD bool finite(float v) { return (float_bits(v) & 0x7f800000u) != 0x7f800000u; }
  static DSQ_HD int32_t abs_key(float v) { return (int32_t)(float_bits(v) & 0x7fffffffu); }
  static DSQ_HD int32_t key_of(float v) {
    uint32_t u = float_bits(v);
    return (u & 0x80000000u) ? -(int32_t)(u & 0x7fffffffu) - 1 : (int32_t)u;
  }
  static DSQ_HD float from_abs_key(int32_t k) { return bits_float((uint32_t)k); }
  static DSQ_HD float from_key(int32_t k) { return bits_float(k < 0 ? ((uint32_t)(-(k + 1)) | 0x80000000u) : (uint32_t)k); }
  static DSQ_HD float max_value() { return 3.40282346638528859812e+38f; }
};
struct F64 {
  typedef double storage; typedef double compute; typedef int64_t key;
  static DSQ_HD double load(double v) { return v; }
  static DSQ_HD double store(double v) { return v; }
  static DSQ_HD bool finite(double v) { return (double_bits(v) & 0x7ff0000000000000ull) != 0x7ff0000000000000ull; }
  static DSQ_HD int64_t abs_key(double v) { return (int64_t)(double_bits(v) & 0x7fffffffffffffffull); }
  static DSQ_HD int64_t key_of(double v) {
    uint64_t u = double_bits(v);
    return (u >> 63) ? -(int64_t)(u & 0x7fffffffffffffffull) - 1 : (int64_t)u;
  }
  static DSQ_HD double bits_to_double(uint64_t u) {
#ifdef DSQ_DEVICE_CODE
    return __longlong_as_double((long long)u);
#else
    return __builtin_bit_cast(double, u);
#endif
  }
  static DSQ_HD double from_abs_key(int64_t k) { return bits_to_double((uint64_t)k); }
  static DSQ_HD double from_key(int64_t k) {
    return bits_to_double(k < 0 ? ((uint64_t)(-(k + 1)) | 0x8000000000000000ull) : (uint64_t)k);
  }
  static DSQ_HD double max_value() { return 1.79769313486231570815e+308; }
};

// Statistics of one group over its finite elements, as order keys, so partial results from
// threads, chunks or blocks combine with integer max/min (exact, associative, order-free).
// Empty (no finite element) is absmax_key = 0, max_key < min_key; both read back as 0.0.
template <class Fmt> struct Stats {
  typedef typename Fmt::key key;
  key absmax_key, max_key, min_key;
};

template <class Fmt> DSQ_HD Stats<Fmt> stats_empty() {
  typedef typename Fmt::key K;
  Stats<Fmt> s;
  s.absmax_key = 0;
  K most_positive = (K)((((uint64_t)1) << (sizeof(K) * 8 - 1)) - 1);
  s.max_key = -most_positive - 1;
  s.min_key = most_positive;
  return s;
}

template <class Fmt> DSQ_HD void stats_add(Stats<Fmt>& s, typename Fmt::storage v) {
  typedef typename Fmt::key K;
  bool ok = Fmt::finite(v);
  K a = Fmt::abs_key(v), k = Fmt::key_of(v);
  K a_ok = ok ? a : (K)0;
  s.absmax_key = a_ok > s.absmax_key ? a_ok : s.absmax_key;
  K hi = ok ? k : s.max_key, lo = ok ? k : s.min_key;
  s.max_key = hi > s.max_key ? hi : s.max_key;
  s.min_key = lo < s.min_key ? lo : s.min_key;
}

template <class Fmt> DSQ_HD void stats_merge(Stats<Fmt>& s, const Stats<Fmt>& o) {
  s.absmax_key = o.absmax_key > s.absmax_key ? o.absmax_key : s.absmax_key;
  s.max_key = o.max_key > s.max_key ? o.max_key : s.max_key;
  s.min_key = o.min_key < s.min_key ? o.min_key : s.min_key;
}

template <class Fmt> DSQ_HD bool stats_has_finite(const Stats<Fmt>& s) { return s.max_key >= s.min_key; }
template <class Fmt> DSQ_HD typename Fmt::compute stats_absmax(const Stats<Fmt>& s) { return Fmt::from_abs_key(s.absmax_key); }
template <class Fmt> DSQ_HD typename Fmt::compute stats_max(const Stats<Fmt>& s) {
  return stats_has_finite(s) ? Fmt::from_key(s.max_key) : (typename Fmt::compute)0;
}
template <class Fmt> DSQ_HD typename Fmt::compute stats_min(const Stats<Fmt>& s) {
  return stats_has_finite(s) ? Fmt::from_key(s.min_key) : (typename Fmt::compute)0;
}

// ---------------------------------------------------------------------------------------------
// Rounding to integers, exact for |v| < 2^22 (callers clamp to the code range, |v| <= 2^16,
// first). Adding and subtracting 1.5·2^23 (2^52 for double) makes the IEEE adder round v to an
// integer, half to even: no library call whose inlining differs between compilers, no negative
// zero, and only selects (no branches), so the host compiler vectorizes the loops around them.
// ---------------------------------------------------------------------------------------------
template <class C> DSQ_HD C round_magic();
template <> DSQ_HD float round_magic<float>() { return 12582912.0f; }
template <> DSQ_HD double round_magic<double>() { return 6755399441055744.0; }

// round half to even
template <class C> DSQ_HD C round_half_even(C v) { return (v + round_magic<C>()) - round_magic<C>(); }
template <class C> DSQ_HD C floor_small(C v) {
  C r = round_half_even(v);
  return r > v ? r - (C)1 : r;
}
// round half away from zero, for v >= 0: half to even, then one up where that rounded a tie down.
// v - r is exact (r is v's nearest integer: Sterbenz for v >= 1/2, r = 0 below), so it is 0.5
// exactly for those ties and for nothing else (ties rounded up give -0.5). Fewer operations than
// floor-then-compare (the same results for every v in [0, 2^22), checked exhaustively for float).
template <class C> DSQ_HD C round_half_up_nonneg(C v) {
  C r = round_half_even(v);
  return v - r == (C)0.5 ? r + (C)1 : r;
}
template <class C> DSQ_HD C clamp(C v, C lo, C hi) {
  C a = v < lo ? lo : v;
  return a > hi ? hi : a;
}

#ifdef DSQ_DEVICE_CODE
DSQ_HD float fma_c(float a, float b, float c) { return fmaf(a, b, c); }
DSQ_HD double fma_c(double a, double b, double c) { return fma(a, b, c); }
#else
DSQ_HD float fma_c(float a, float b, float c) { return std::fma(a, b, c); }
DSQ_HD double fma_c(double a, double b, double c) { return std::fma(a, b, c); }
#endif

// ---------------------------------------------------------------------------------------------
// Fake quantization (quantize + dequantize in the input's dtype). Parameters of one group.
// ---------------------------------------------------------------------------------------------
template <class C> struct FakeParams {
  C scale;     // multiplies x (symmetric) ; step size (asymmetric)
  C inv;       // 1 / scale
  C base;      // asymmetric: group minimum ; symmetric: 0
  C lo, hi;    // code range
  bool halve;  // asymmetric group whose span mx - mn overflows C: scale with halved operands
};

template <class C> DSQ_HD C max_finite();
template <> DSQ_HD float max_finite<float>() { return 3.40282346638528859812e+38f; }
template <> DSQ_HD double max_finite<double>() { return 1.79769313486231570815e+308; }

// Symmetric: s = C(2^b / (2·d(absmax) + 1e-5)), written as 2^(b-1) / (d(absmax) + 5e-6), which is
// the same double quotient (both operands halved exactly) but cannot overflow for dtype max.
template <class C> DSQ_HD FakeParams<C> fake_params_symmetric(C absmax, int bits) {
  FakeParams<C> p;
  double half_levels = (double)(1u << (bits - 1));
  p.scale = (C)(half_levels / ((double)absmax + 5e-6));
  p.inv = (C)1 / p.scale;
  p.base = (C)0;
  p.lo = -(C)half_levels;
  p.hi = (C)half_levels - (C)1;
  p.halve = false;
  return p;
}

// Asymmetric: s = C((d(mx) - d(mn) + 1e-5) / 2^b), codes 0 .. 2^b - 1. Written with halved
// operands (exact for every finite float; for float64 it avoids overflow of mx - mn).
template <class C> DSQ_HD FakeParams<C> fake_params_asymmetric(C mn, C mx, int bits) {
  FakeParams<C> p;
  double half_levels = (double)(1u << (bits - 1));
  p.scale = (C)((((double)mx * 0.5 - (double)mn * 0.5) + 5e-6) / half_levels);
  p.inv = (C)1 / p.scale;
  p.base = mn;
  p.lo = (C)0;
  p.hi = (C)(2.0 * half_levels) - (C)1;
  p.halve = mx - mn > max_finite<C>();
  return p;
}

template <class Fmt> DSQ_HD FakeParams<typename Fmt::compute> fake_params(const Stats<Fmt>& st, int bits, bool symmetric) {
  return symmetric ? fake_params_symmetric(stats_absmax(st), bits)
                   : fake_params_asymmetric(stats_min(st), stats_max(st), bits);
}

// The value on the code scale, before rounding: x·s (symmetric) or (x - mn)·(1/s) (asymmetric).
// A group spanning more than the largest finite C (only possible near ±max) would overflow
// x - mn; it computes (x/2 - mn/2)·(2/s) instead, which is the same product wherever both exist.
template <class C> DSQ_HD C fake_scaled(C x, const FakeParams<C>& p, bool symmetric) {
  if (symmetric) return x * p.scale;
  return p.halve ? (x * (C)0.5 - p.base * (C)0.5) * (p.inv * (C)2) : (x - p.base) * p.inv;
}

// The code as a value of type C. u in [0, 1) for stochastic rounding, ignored otherwise.
// Non-finite x must not reach here (callers pass finite values only; see fake_element).
template <class C> DSQ_HD C fake_code(C x, const FakeParams<C>& p, bool symmetric, bool stochastic, float u) {
  C v = clamp(fake_scaled(x, p, symmetric), p.lo, p.hi);
  if (stochastic) {
    C t = floor_small(v);
    return (C)u < v - t ? t + (C)1 : t;   // v <= hi, so t + 1 <= hi whenever it is taken
  }
  return symmetric ? round_half_even(v) : round_half_up_nonneg(v);
}

template <class C> DSQ_HD C fake_dequant(C q, const FakeParams<C>& p, bool symmetric) {
  return symmetric ? q * p.inv : fma_c(q, p.scale, p.base);
}

// The exact dequantized value never exceeds the group's largest magnitude, but its rounded
// evaluation can, and near the format's maximum that overflows (symmetric, 2 bits, absmax near
// max: s is subnormal, so 1/s is coarse and q·(1/s) lands beyond max). Saturating at the output
// format's largest finite value keeps every result that was finite bit for bit (a value above
// the limit that still rounded to a finite output rounded to the limit) and turns the overflows
// into that limit. The limit is a constant of the format (no register in the kernels).
// 16-bit formats computed in float have headroom, which the register-bound GPU kernels use to skip
// the clamp where it can never act: float16 always (absmax <= 65504, so s is a normal float and
// q·r rounds back to at most 65504; the half overflow threshold is 65520), bfloat16 when
// asymmetric (fma(q, s, mn) stays within float rounding of mx, far below the bfloat16 overflow
// threshold). Symmetric bfloat16 near its maximum has a subnormal float s, and needs it.
// fake_saturates says where the clamp acts (the CPU vector loops apply it as a max/min pair).
template <class Fmt> DSQ_HD bool fake_saturates(bool symmetric) { (void)symmetric; return true; }
template <> DSQ_HD bool fake_saturates<F16>(bool) { return false; }
template <> DSQ_HD bool fake_saturates<BF16>(bool symmetric) { return symmetric; }
template <class Fmt> DSQ_HD typename Fmt::compute fake_saturate(typename Fmt::compute y, bool symmetric) {
  return fake_saturates<Fmt>(symmetric) ? clamp(y, -Fmt::max_value(), Fmt::max_value()) : y;
}

// Fake quantization of one finite value of the compute type.
template <class C> DSQ_HD C fake_value(C x, const FakeParams<C>& p, bool symmetric, bool stochastic, float u) {
  return fake_dequant(fake_code(x, p, symmetric, stochastic, u), p, symmetric);
}

// One element of fake quantization in storage format: non-finite elements come back unchanged
// (and are replaced by 0 inside the arithmetic, which never sees NaN or Inf).
template <class Fmt>
DSQ_HD typename Fmt::storage fake_element(typename Fmt::storage raw, const FakeParams<typename Fmt::compute>& p,
                                          bool symmetric, bool stochastic, float u) {
  typedef typename Fmt::compute C;
  const bool ok = Fmt::finite(raw);
#ifdef DSQ_GPU_ISA
  // The same selects as below, but ternaries here become a branch around the arithmetic of
  // every element (the arithmetic is only needed when ok); pick keeps the code straight-line.
  const C x = Fmt::load(pick(ok, raw, (typename Fmt::storage)0));
  const C y = fake_saturate<Fmt>(fake_value(x, p, symmetric, stochastic, u), symmetric);
  return pick(ok, Fmt::store(y), raw);
#else
  const C y = fake_saturate<Fmt>(fake_value(ok ? Fmt::load(raw) : (C)0, p, symmetric, stochastic, u), symmetric);
  return ok ? Fmt::store(y) : raw;
#endif
}

// ---------------------------------------------------------------------------------------------
// Integer quantization in DeepSpeed's format (params = 1/scale [, offset]; signed codes).
// Contract (DESIGN.md §2, docs/format.md), per group, b bits, lo = -2^(b-1), hi = 2^(b-1) - 1:
//   symmetric : scale = 1 if absmax = 0, else C(2^b / (2·d(absmax)));  params [f32(1/scale)]
//   asymmetric: scale = 1 if mx = mn,    else C(2^b / (d(mx) - d(mn))); offset = C((d(mx) + d(mn)) / 2)
//               params [f32(1/scale), f32(offset)]
//   code      : clamp(rne(C(C(x - offset)·scale)), lo, hi) (offset 0 when symmetric);
//               NaN -> 0, +Inf -> hi, -Inf -> lo
// C is float (float64 inputs: double). Statistics are over finite elements only.
// ---------------------------------------------------------------------------------------------
template <class C> struct IntParams {
  C scale;    // multiplies (x - offset)
  float p0;   // stored: f32(1 / scale)
  float p1;   // stored: offset (asymmetric), 0 (symmetric)
  C offset;
  C lo, hi;
};

// Stores group g's params in DeepSpeed's layout: [groups, 1] (1/scale) or [groups, 2] (1/scale, offset).
template <class C> DSQ_HD void store_int_params(float* params, int64_t g, const IntParams<C>& p, bool symmetric) {
  if (symmetric) {
    params[g] = p.p0;
  } else {
    params[2 * g] = p.p0;
    params[2 * g + 1] = p.p1;
  }
}

// num / den (den >= 0) rounded once to C; 1 for an empty range. Saturates at the largest finite C
// instead of overflowing: only a group whose span is below 2^b / max_finite (float32/bfloat16
// values near the subnormal range) gets there, and an infinite scale would turn 0·scale into NaN.
template <class C> DSQ_HD C int_scale(double num, double den) {
  if (den == 0.0) return (C)1;
  double s = num / den;
  return s < (double)max_finite<C>() ? (C)s : max_finite<C>();
}

DSQ_HD float to_float_saturated(double v) {
  const double big = (double)max_finite<float>();
  return (float)clamp(v, -big, big);
}

template <class Fmt> DSQ_HD IntParams<typename Fmt::compute> int_params(const Stats<Fmt>& st, int bits, bool symmetric) {
  typedef typename Fmt::compute C;
  IntParams<C> p;
  double levels = (double)(1u << bits);
  const double big = max_finite<double>();
  if (symmetric) {
    // 2^b / (2·absmax) is the same double quotient as 2^(b-1) / absmax, which cannot overflow
    p.scale = int_scale<C>(levels * 0.5, (double)stats_absmax(st));
    p.offset = (C)0;
  } else {
    double mx = (double)stats_max(st), mn = (double)stats_min(st);
    // Only float64 groups near ±max overflow the span or the sum; they use halved operands.
    double span = mx - mn, sum = mx + mn;
    p.scale = span <= big ? int_scale<C>(levels, span) : int_scale<C>(levels * 0.5, mx * 0.5 - mn * 0.5);
    p.offset = (C)(sum <= big && sum >= -big ? sum * 0.5 : mx * 0.5 + mn * 0.5);
  }
  // float64 groups beyond float32's range: the float32 params saturate instead of becoming Inf
  p.p0 = to_float_saturated((double)((C)1 / p.scale));
  p.p1 = to_float_saturated((double)p.offset);
  p.lo = -(C)(levels * 0.5);
  p.hi = (C)(levels * 0.5) - (C)1;
  return p;
}

// The params of a group given by the caller (static or calibrated scales) in the stored layout:
// p0 = the step (1/scale), p1 = the offset (asymmetric). The scale is C(1 / C(p0)), as torch's
// per-channel ops take x·(1/scale); a step that is not positive and finite is the caller's (codes
// are then whatever IEEE arithmetic and the clamp give, never an error on the device).
template <class C> DSQ_HD IntParams<C> int_params_given(float p0, float p1, int bits, bool symmetric) {
  IntParams<C> p;
  const double levels = (double)(1u << bits);
  p.scale = (C)1 / (C)p0;
  p.offset = symmetric ? (C)0 : (C)p1;
  p.p0 = p0;
  p.p1 = symmetric ? 0.0f : p1;
  p.lo = -(C)(levels * 0.5);
  p.hi = (C)(levels * 0.5) - (C)1;
  return p;
}

// Signed code of one value of the compute type: NaN -> 0, +Inf -> hi, -Inf -> lo. NaN is replaced
// by the offset (code 0); ±Inf need nothing, they clamp to hi / lo (scale > 0).
template <class C> DSQ_HD int32_t int_code_value(C x, const IntParams<C>& p) {
  return (int32_t)round_half_even(clamp(((x == x ? x : p.offset) - p.offset) * p.scale, p.lo, p.hi));
}

// Signed code of one stored element.
template <class Fmt> DSQ_HD int32_t int_code(typename Fmt::storage raw, const IntParams<typename Fmt::compute>& p) {
  return int_code_value(Fmt::load(raw), p);
}

// Dequantized value (compute type float) of a code with stored params.
DSQ_HD float int_dequant(int32_t q, float p0, float p1, bool symmetric) {
  return symmetric ? (float)q * p0 : fma_c((float)q, p0, p1);
}

// The quiet NaN a dequantized NaN (from NaN or infinite params) is stored as. Converting the NaN
// itself would not do: the host conversions keep payload bits, the device ones do not.
template <class Fmt> DSQ_HD typename Fmt::storage canonical_nan();
template <> DSQ_HD uint16_t canonical_nan<F16>() { return 0x7e00u; }
template <> DSQ_HD uint16_t canonical_nan<BF16>() { return 0x7fc0u; }
template <> DSQ_HD float canonical_nan<F32>() { return bits_float(0x7fc00000u); }
template <> DSQ_HD double canonical_nan<F64>() { return F64::bits_to_double(0x7ff8000000000000ull); }

// The dequantized value for output format Fmt. With finite params it saturates at the format's
// largest finite value (float32's for float64) instead of overflowing; this changes no result that
// was finite (as in fake_dequant). Non-finite params are the caller's and give what IEEE gives.
template <class Fmt> DSQ_HD float int_dequant_for(int32_t q, float p0, float p1, bool symmetric) {
  const float y = int_dequant(q, p0, p1, symmetric);
  const float limit = (double)Fmt::max_value() < (double)max_finite<float>() ? (float)Fmt::max_value() : max_finite<float>();
  const bool finite_params = (p0 - p0) == 0.0f && (p1 - p1) == 0.0f;
  return finite_params ? clamp(y, -limit, limit) : y;
}

// One dequantized element in the output format.
template <class Fmt> DSQ_HD typename Fmt::storage int_dequant_element(int32_t q, float p0, float p1, bool symmetric) {
  float y = int_dequant_for<Fmt>(q, p0, p1, symmetric);
  return y == y ? Fmt::store((typename Fmt::compute)y) : canonical_nan<Fmt>();
}

// ---------------------------------------------------------------------------------------------
// Code bytes. When 8 % b == 0 (b = 2, 4, 8) a byte holds `per` = 8/b codes of width w = b, the
// FIRST element in the HIGH bits (for 4 bits: element 2j in bits 7..4, as DeepSpeed); codes are
// two's complement masked to w bits. Other widths store one code per byte (per = 1, w = 8, int8).
// Packing follows the flat element order, across group and row boundaries.
// ---------------------------------------------------------------------------------------------
DSQ_HD int int_codes_per_byte(int bits) { return 8 % bits == 0 ? 8 / bits : 1; }

// Field j (0 = first element) of a byte holding `per` codes, placed in the byte.
DSQ_HD uint32_t code_to_field(int32_t code, int per, int j) {
  int w = 8 / per;
  return ((uint32_t)code & ((1u << w) - 1u)) << (8 - w * (j + 1));
}

// Field j of a byte holding `per` codes, as an unsigned value 0 .. 2^w - 1.
DSQ_HD uint32_t field_unsigned(uint32_t byte, int per, int j) {
  int w = 8 / per;
  return (byte >> (8 - w * (j + 1))) & ((1u << w) - 1u);
}

// Field j of a byte holding `per` codes, as a signed (two's complement) value -2^(w-1) .. 2^(w-1)-1.
DSQ_HD int32_t field_signed(uint32_t byte, int per, int j) {
  int w = 8 / per;
  uint32_t u = field_unsigned(byte, per, j);
  return (int32_t)u - (int32_t)((u >> (w - 1)) << w);
}

// ---------------------------------------------------------------------------------------------
// ZeRO++ communication ops (docs/zeropp.md; DeepSpeed swizzled_quantize.cu, quant_reduce.cu).
// ---------------------------------------------------------------------------------------------
// Swizzle: the groups of the input, viewed as [nodes][dpn][pipe][C] (C = groups per slice), are
// written transposed to [pipe][dpn][nodes][C], so that each local device's slab (all nodes) is
// contiguous for the intra-node all-to-all. Returns the input group of output group o.
DSQ_HD int64_t swizzle_source_group(int64_t o, int64_t C, int64_t pipe, int64_t nodes, int64_t dpn) {
  (void)pipe;
  const int64_t x = o % C, q = o / C, P = nodes * dpn;
  const int64_t y = q / P, r = q % P, d = r / nodes, n = r % nodes;
  return ((n * dpn + d) * pipe + y) * C + x;
}

// One step of the quantized reduction's sum: float32 addition, or (DeepSpeed's numbers) the
// dequantized term and the sum rounded to float16, which is float16 arithmetic exactly (a float
// sum of two halves rounded once to half is the correctly rounded half sum).
DSQ_HD float reduce_add(float sum, float term, bool half_accumulate) {
  if (!half_accumulate) return sum + term;
  return half_to_float(float_to_half(sum + half_to_float(float_to_half(term))));
}

// LoCo error feedback: an exponential moving average of the quantization residual v - dq, where
// v is the value that was quantized (input + old error) and dq its dequantized value. Written
// without a fused multiply-add. A non-finite v (or dq) contributes no residual, so one NaN or Inf
// gradient does not poison the error buffer for every later step.
template <class C> DSQ_HD C loco_error(C err_old, C v, C dq, C beta) {
  const C r = v - dq;
  const C residual = (r - r) == (C)0 ? r : (C)0;   // r - r is 0 only for finite r
  const C keep = beta * err_old;
  const C add = ((C)1 - beta) * residual;
  return keep + add;
}

// ---------------------------------------------------------------------------------------------
// DeepSpeed's experimental inference dequantization (dequantize_int{4,8}_to_half_experimental):
// unsigned codes, float16 scale and minimum per group, y = f16(f16(q) / scale) + min in
// half-precision arithmetic. Each half operation is computed in float and rounded once to half;
// float's 24-bit significand is at least 2·11 + 2 bits, so that double rounding is innocuous and
// the results are the correctly rounded half quotient and sum. f16(q) is exact (q <= 255).
// ---------------------------------------------------------------------------------------------
// A NaN result (0/0, Inf - Inf, NaN inputs) is the canonical quiet NaN, as in int_dequant_element.
// Each half operation saturates at ±65504 instead of overflowing to Inf (a finite scale below
// q / 65504 and a sum beyond the range would): no result that was finite changes, since a value
// beyond 65504 that rounded to a finite half rounded to 65504. 0/0 (a zero scale with code 0)
// remains NaN.
DSQ_HD uint16_t uint_dequant_half(uint32_t q, uint16_t scale, uint16_t minimum) {
  const float top = F16::max_value();
  uint16_t t = float_to_half(clamp((float)q / half_to_float(scale), -top, top));
  const float m = half_to_float(minimum);
  float y = half_to_float(t) + m;
  y = (m - m) == 0.0f ? clamp(y, -top, top) : y;     // a non-finite minimum is the caller's
  return y == y ? float_to_half(y) : canonical_nan<F16>();
}

}  // namespace dsq
