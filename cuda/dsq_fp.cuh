// dsq_fp.cuh — the scalar math of minifloat quantization (dsquant.fp_quantize, fp_dequantize,
// fake_fp_quantize), host AND device: element codes of FP8 (E4M3, E5M2), FP6 (E3M2, E2M3) and FP4
// (E2M1) with round to nearest even or stochastic rounding, their values, the block scales
// (absmax as float32, OCP MX's E8M0 shared exponent, NVFP4's E4M3 block scale with a float32
// tensor scale) and the byte packing. The contract is docs/fp.md; the format parameters come from
// dsq_fp_formats.cuh, generated from dsquant/core/fp_formats.py.
//
// Encoding uses only exact integer operations on the bits and one IEEE addition (the subnormal
// range: adding 2^(emin - M + p) makes the adder round at the target's quantum, as float_to_half
// does), so host and device give the same codes for float and double inputs alike.
#pragma once
#include "dsq_math.cuh"
#include "dsq_fp_formats.cuh"

namespace dsq {

// ---------------------------------------------------------------------------------------------
// Bits of the compute type (float for 16/32-bit inputs, double for float64).
// ---------------------------------------------------------------------------------------------
template <class C> struct FBits;
template <> struct FBits<float> {
  typedef uint32_t U;
  static constexpr int MANT = 23, BIAS = 127;
  static DSQ_HD U bits(float f) { return float_bits(f); }
  static DSQ_HD float from(U u) { return bits_float(u); }
};
template <> struct FBits<double> {
  typedef uint64_t U;
  static constexpr int MANT = 52, BIAS = 1023;
  static DSQ_HD U bits(double d) { return double_bits(d); }
  static DSQ_HD double from(U u) { return F64::bits_to_double(u); }
};

// 2^e as C, for e in the normal range of C.
template <class C> DSQ_HD C pow2(int e) {
  typedef FBits<C> B;
  return B::from((typename B::U)(e + B::BIAS) << B::MANT);
}

// 2^e as float for -149 <= e <= 127 (subnormal powers included, exact).
DSQ_HD float pow2f_wide(int e) {
  return e >= -126 ? bits_float((uint32_t)(e + 127) << 23) : bits_float(1u << (e + 149));
}

// ---------------------------------------------------------------------------------------------
// Element codes. A code is BITS wide: sign in the top bit, then E exponent bits, then M mantissa bits.
// ---------------------------------------------------------------------------------------------
// The magnitude code of a >= 0 (any non-NaN value of C, Inf included) rounded to nearest even,
// at most `limit` (overflow gives min(code, limit); callers pass MAX_CODE + 1 or less). Branch-free
// integer operations on the bits plus one IEEE addition, so the CPU loops vectorize it as written.
template <class Fp, class C> DSQ_HD uint32_t fp_magnitude_rne(C a, uint32_t limit) {
  typedef FBits<C> B;
  typedef typename B::U U;
  constexpr int emin = 1 - Fp::BIAS, drop = B::MANT - Fp::M;
  const U u = B::bits(a);
  // below 2^emin the result is subnormal (or the smallest normal, by carry): the sum's ulp is the
  // target's quantum 2^(emin - M), so the adder rounds to nearest even, and the low bits are the code
  const C k = pow2<C>(emin - Fp::M + B::MANT);
  const U sub = B::bits(a + k) - B::bits(k);
  // normal: rebias the exponent and round the bits to M mantissa bits (nearest even); no wrap for
  // u >= 2^emin's bits, which are above the rebias
  constexpr U rebias = (U)(B::BIAS - Fp::BIAS) << B::MANT;
  const U norm = (u - rebias + ((((U)1) << (drop - 1)) - 1) + ((u >> drop) & 1)) >> drop;
  const U mag = u < B::bits(pow2<C>(emin)) ? sub : norm;
  return (uint32_t)(mag < (U)limit ? mag : (U)limit);
}

// Stochastic rounding of finite a >= 0: down or up to the neighbouring representable magnitudes
// (at a's binade, the subnormal quantum below 2^emin), up with probability equal to the dropped
// fraction, using u in [0, 1) (24 random bits). Exact: a / quantum and the neighbours are exact.
template <class Fp, class C> DSQ_HD uint32_t fp_magnitude_sr(C a, float u) {
  typedef FBits<C> B;
  constexpr int emin = 1 - Fp::BIAS;
  int e = (int)(B::bits(a) >> B::MANT) - B::BIAS;   // floor(log2(a)) for normal a (Inf: BIAS + 1)
  e = e < emin ? emin : (e > B::BIAS ? B::BIAS : e);
  const C k = a * pow2<C>(Fp::M - e);               // a / quantum, < 2^(M + 1): exact
  const C t = floor_small(k);
  const C up = (C)u < k - t ? t + (C)1 : t;
  const C r = up * pow2<C>(e - Fp::M);               // exact (e - M >= emin - M >= -17)
  return fp_magnitude_rne<Fp, C>(r, Fp::MAX_CODE + 1);   // r is representable (or overflows): no rounding
}

// The code of v (any value of C). Overflow (and Inf) saturates to ±max when `saturate`, else
// follows the format: E5M2 gives ±Inf, E4M3 NaN, the FP6/FP4 formats (no Inf or NaN) ±max. NaN
// gives the format's NaN with v's sign (E4M3, E5M2) or +0 (FP6/FP4, which have no NaN).
template <class Fp, class C> DSQ_HD uint32_t fp_encode(C v, bool saturate, bool stochastic, float u) {
  typedef FBits<C> B;
  typedef typename B::U U;
  // every format's overflow code is its largest finite code or the one above it (Inf, or E4M3's
  // NaN), so overflow is one unsigned min with the code it gives
  static_assert(Fp::INF_CODE == Fp::MAX_CODE || Fp::INF_CODE == Fp::MAX_CODE + 1, "overflow code");
  const U bits = B::bits(v);
  const uint32_t sign = (uint32_t)(bits >> (8 * sizeof(U) - Fp::BITS)) & (1u << (Fp::BITS - 1));   // shift, and
  const U abs_bits = bits & ~(((U)1) << (8 * sizeof(U) - 1));
  const C a = B::from(abs_bits);
  const bool nan = abs_bits > ((U)(2 * B::BIAS + 1) << B::MANT);   // above Inf's bits
  const uint32_t limit = saturate ? Fp::MAX_CODE : Fp::INF_CODE;
  uint32_t mag;
  if (stochastic) {
    mag = fp_magnitude_sr<Fp, C>(nan ? (C)0 : a, u);
    mag = mag < limit ? mag : limit;
  } else {
    mag = fp_magnitude_rne<Fp, C>(a, limit);   // a NaN's code is replaced below
  }
  const uint32_t nan_code = Fp::NONFINITE == FP_FINITE_ONLY ? 0u : (sign | Fp::NAN_CODE);
  return nan ? nan_code : (sign | mag);
}

// The value of a code as a float (exact: every element format is a subset of float32). NaN codes
// give the quiet NaN with the code's sign. Branch-free, on the magnitude bits: a normal code is its
// bits moved into float32's exponent and mantissa fields plus the exponent rebias; a subnormal
// code (below 2^M) is its integer value times the quantum 2^(emin - M).
template <class Fp> DSQ_HD float fp_decode(uint32_t code) {
  constexpr uint32_t mag_mask = (1u << (Fp::BITS - 1)) - 1, inf_mag = ((1u << Fp::E) - 1) << Fp::M;
  const uint32_t sign = (code << (32 - Fp::BITS)) & 0x80000000u;
  const uint32_t mag = code & mag_mask;
  const float sub = (float)mag * pow2<float>(1 - Fp::BIAS - Fp::M);
  const float norm = bits_float((mag << (23 - Fp::M)) + ((uint32_t)(127 - Fp::BIAS) << 23));
  float v = mag < (1u << Fp::M) ? sub : norm;
  if (Fp::NONFINITE == FP_NAN_ONLY) v = mag == mag_mask ? bits_float(0x7fc00000u) : v;
  if (Fp::NONFINITE == FP_IEEE) v = mag >= inf_mag ? bits_float(mag > inf_mag ? 0x7fc00000u : 0x7f800000u) : v;
  return bits_float(float_bits(v) | sign);
}

// ---------------------------------------------------------------------------------------------
// Scales. Every scaling gives, per group: `mul`, what x is multiplied by before encoding; `dq`,
// what a decoded code is multiplied by (in C) to dequantize; and the stored scale (float32 for
// absmax, a uint8 code for mx and nvfp4).
// ---------------------------------------------------------------------------------------------
template <class C> struct FpScale {
  C mul;
  float dq;
  float stored;      // absmax: the float32 scale
  uint32_t code;     // mx: the E8M0 code; nvfp4: the E4M3 code of the block scale
};

// absmax: mul = C(max / absmax) (1 for an all-zero group, saturated at C's largest finite value for
// groups below max / FLT_MAX), stored = dq = f32(absmax / max) (0 for an all-zero group).
template <class Fp, class C> DSQ_HD FpScale<C> fp_scale_absmax(C absmax) {
  FpScale<C> s;
  const C q = (C)Fp::MAX / absmax;
  s.mul = absmax == (C)0 ? (C)1 : (q < max_finite<C>() ? q : max_finite<C>());
  s.stored = to_float_saturated((double)(absmax / (C)Fp::MAX));
  s.dq = s.stored;
  s.code = 0;
  return s;
}

// floor(log2(a)) of a positive finite value (subnormals of C count as below C's normal range:
// callers clamp far above it).
template <class C> DSQ_HD int floor_log2(C a) {
  typedef FBits<C> B;
  return (int)(B::bits(a) >> B::MANT) - B::BIAS;
}

// OCP MX v1.0 shared exponent of a block with largest finite magnitude `amax`, as E8M0 (X + 127):
// FLOOR (the spec): X = floor(log2(amax)) - emax_elem; RCEIL (torchao's RCEIL, NVIDIA's cuBLAS
// recipe): X = ceil(log2(C(amax / max_elem))). Clamped to E8M0's range [-127, 127]; an all-zero
// block gets X = -127 (code 0). Elements are scaled by the exact power 2^-X.
template <class Fp, class C> DSQ_HD FpScale<C> fp_scale_mx(C amax, int rounding) {
  typedef FBits<C> B;
  int x;
  if (rounding == FP_MX_RCEIL) {
    const C d = amax / (C)Fp::MAX;
    const bool exact = (B::bits(d) & ((((typename B::U)1) << B::MANT) - 1)) == 0;
    // d below C's normal range: only a float d in (2^-127, 2^-126) has a ceiling above -127
    const bool tiny = (B::bits(d) >> B::MANT) == 0;
    x = tiny ? (sizeof(C) == 4 && (double)d > 5.877471754111438e-39 ? -126 : -127) : floor_log2(d) + (exact ? 0 : 1);
  } else {
    x = floor_log2(amax) - Fp::EMAX;
  }
  x = amax == (C)0 || x < -127 ? -127 : (x > 127 ? 127 : x);
  FpScale<C> s;
  // 2^-x in C: for float, 2^127 is normal and 2^-127 subnormal (exact either way)
  s.mul = sizeof(C) == 8 ? pow2<C>(-x) : (C)pow2f_wide(-x);
  s.dq = pow2f_wide(x);
  s.stored = 0.0f;
  s.code = (uint32_t)(x + 127);
  return s;
}

DSQ_HD float e8m0_value(uint32_t code) { return code == 255u ? bits_float(0x7fc00000u) : pow2f_wide((int)code - 127); }

// NVFP4 (NVIDIA: the NVFP4 recipe of Transformer Engine and cuBLAS), E2M1 elements:
//   tensor encode scale  s_enc = f32(448·6 / amax_tensor), 1 when amax_tensor is 0, at most FLT_MAX;
//   stored tensor scale  f32(1 / s_enc)
//   block scale code     e4m3(f32(f32(amax_block / 6) · s_enc)), saturating, nearest even;
//   element multiplier   f32(s_enc / e4m3 value), 0 when the block code is 0;
//   dq                   f32(e4m3 value · tensor scale).
DSQ_HD float nvfp4_tensor_encode(float amax) {
  const float s = 2688.0f / amax;
  return amax == 0.0f ? 1.0f : (s < max_finite<float>() ? s : max_finite<float>());
}

template <class C> DSQ_HD FpScale<C> fp_scale_nvfp4(C amax, float s_enc, float tensor_scale) {
  FpScale<C> s;
  const float block_amax = to_float_saturated((double)amax);
  s.code = fp_encode<FpE4M3, float>((block_amax / 6.0f) * s_enc, true, false, 0.0f);
  const float block = fp_decode<FpE4M3>(s.code);
  s.mul = (C)(s.code == 0u ? 0.0f : s_enc / block);
  s.dq = block * tensor_scale;
  s.stored = 0.0f;
  return s;
}

// The scale of one group from its largest finite magnitude.
template <class Fp, class C>
DSQ_HD FpScale<C> fp_scale(C amax, int scaling, int rounding, float s_enc, float tensor_scale) {
  if (scaling == FP_MX) return fp_scale_mx<Fp, C>(amax, rounding);
  if (scaling == FP_NVFP4) return fp_scale_nvfp4<C>(amax, s_enc, tensor_scale);
  return fp_scale_absmax<Fp, C>(amax);
}

// dq of a group from its stored scale: absmax: the float32 scale; mx: 2^(code - 127) (NaN for
// code 255); nvfp4: f32(e4m3 value of the code · tensor scale).
DSQ_HD float fp_dq_absmax(float scale) { return scale; }
DSQ_HD float fp_dq_mx(uint8_t code) { return e8m0_value(code); }
DSQ_HD float fp_dq_nvfp4(uint8_t code, float tensor_scale) { return fp_decode<FpE4M3>(code) * tensor_scale; }

// The dequantized value of a code in the compute type: C(decode(code)) · C(dq).
template <class Fp, class C> DSQ_HD C fp_value(uint32_t code, float dq) { return (C)fp_decode<Fp>(code) * (C)dq; }

// One dequantized element in output format Fmt; NaN results are the format's canonical NaN (the
// host conversions keep payloads, the device's do not).
template <class Fp, class Fmt> DSQ_HD typename Fmt::storage fp_dequant_element(uint32_t code, float dq) {
  const typename Fmt::compute y = fp_value<Fp, typename Fmt::compute>(code, dq);
  return y == y ? Fmt::store(y) : canonical_nan<Fmt>();
}

// One element of fake FP quantization in storage format: non-finite elements come back unchanged.
template <class Fp, class Fmt>
DSQ_HD typename Fmt::storage fp_fake_element(typename Fmt::storage raw, const FpScale<typename Fmt::compute>& s,
                                             bool saturate, bool stochastic, float u) {
  typedef typename Fmt::compute C;
  const bool ok = Fmt::finite(raw);
  const C x = ok ? Fmt::load(raw) : (C)0;
  const uint32_t code = fp_encode<Fp, C>(x * s.mul, saturate, stochastic, u);
  const C y = fp_value<Fp, C>(code, s.dq);
  return ok ? (y == y ? Fmt::store(y) : canonical_nan<Fmt>()) : raw;
}

// ---------------------------------------------------------------------------------------------
// Packing: a bit stream, least significant bit first: code k occupies bits [BITS·k, BITS·(k+1)),
// byte b holds stream bits [8b, 8b + 8). So FP8 is one byte per code, FP4 puts element 0 in the
// low nibble, FP6 puts 4 codes in 3 bytes (c0 | c1 << 6 | c2 << 12 | c3 << 18, little endian).
// A unit is the smallest run of whole bytes: FP_UNIT<Fp> codes in FP_UNIT<Fp> · BITS / 8 bytes.
// ---------------------------------------------------------------------------------------------
template <class Fp> struct FpUnit {
  static constexpr int CODES = Fp::BITS == 8 ? 1 : (Fp::BITS == 6 ? 4 : 2);
  static constexpr int BYTES = CODES * Fp::BITS / 8;
};

// The stream word of a unit (CODES codes) and back.
template <class Fp> DSQ_HD uint32_t fp_pack(const uint32_t* codes) {
  uint32_t w = 0;
  for (int k = 0; k < FpUnit<Fp>::CODES; ++k) w |= codes[k] << (Fp::BITS * k);
  return w;
}
template <class Fp> DSQ_HD uint32_t fp_unpack(uint32_t word, int k) {
  return (word >> (Fp::BITS * k)) & ((1u << Fp::BITS) - 1u);
}
template <class Fp> DSQ_HD void fp_store_unit(uint8_t* p, uint32_t word) {
  for (int b = 0; b < FpUnit<Fp>::BYTES; ++b) p[b] = (uint8_t)(word >> (8 * b));
}
template <class Fp> DSQ_HD uint32_t fp_load_unit(const uint8_t* p) {
  uint32_t w = 0;
  for (int b = 0; b < FpUnit<Fp>::BYTES; ++b) w |= (uint32_t)p[b] << (8 * b);
  return w;
}

}  // namespace dsq
