// dsq_fp_ds.cuh — DeepSpeed's FP quantizer format (the fp_quantizer extension, reference semantics
// §7; docs/deepspeed_fp.md), host AND device: the code space, the per-group scale, and the record
// layout. The CPU loops (dsquant/backends/cpu/fp_ds.hpp) and the CUDA kernels (dsq_fp_ds.cu) run
// only these functions, so both give the same bytes.
//
// Code space ("compat" mode): q_bits = 1 + E + M, sign in the top bit, then E exponent bits, then
// M mantissa bits, bias = 2^(E-1) - 1. EVERY exponent code is an ordinary binade, code 0 included:
//     value(s, e, m) = (-1)^s · 2^(e - bias) · (1 + m / 2^M)
// (no zero, no subnormals, no Inf or NaN codes). The largest magnitude is DeepSpeed's q_range
// (480, 114688 for 8 bits with M = 3 / 2; 510 for 12 bits (E4M7); 28 for 6; 6 for 4 bits), the
// smallest 2^-bias. This is how DeepSpeed's decoder reads every code, so every record DeepSpeed
// writes decodes here to what DeepSpeed means, and every record written here decodes in DeepSpeed
// to the same values.
//
// Encoding (dsquant's, DeepSpeed's defects fixed, §11 rows 38-43): per group, absmax over the
// finite elements; inv = q_range / absmax (1 for a group without a nonzero finite element),
// stored scale f32(absmax / q_range) (0 for such a group); each element's v = x·inv (see
// ds_fp_params for groups so small that inv overflows) is rounded to
// the NEAREST code, ties to even (DeepSpeed: half up), or stochastically between the two codes
// around it with probability proportional to the distance (DeepSpeed: Poisson offsets, in effect
// truncation). Magnitudes at or beyond q_range saturate. Zero has no code: the nearest codes are
// ±2^-bias, so +0 becomes the code 0 (+2^-bias) and -0 its negative, and |v| < 2^-bias rounds to
// ±2^-bias (nearest), or stochastically to +2^-bias with probability (v + 2^-bias) / 2^(1-bias).
// NaN becomes code 0 (as NaN becomes code 0 in integer quantization), ±Inf ±q_range.
//
// Record layout (DeepSpeed's): group g is R = S·q_bits/8 + 4 bytes: the codes of its S elements as
// an LSB-first bit stream (element k in bits [k·q_bits, (k+1)·q_bits) counted from bit 0 of the
// record's first byte), then the scale as a little-endian float32. Codes move in units of
// U = 8 / gcd(8, q_bits) elements (1, 2, 4, 2 for 8, 4, 6, 12 bits), U·q_bits/8 whole bytes.
//
// The same record layout also carries the standard OCP element codes (the default mode of
// dsquant.compat.deepspeed_fp): OcpSpace<Fp> below takes its codes and scales from dsq_fp.cuh
// (dsquant.fp_quantize's math), so those records hold exactly fp_quantize's codes and scales.
#pragma once
#include "dsq_fp.cuh"
#include "dsq_math.cuh"

namespace dsq {

struct DsFp {
  int bits, E, M, bias;
};

// q_bits and mantissa bits (E = q_bits - 1 - M); dsquant.core.fp_ds lists the supported pairs.
DSQ_HD DsFp ds_fp_format(int q_bits, int mantissa_bits) {
  DsFp f;
  f.bits = q_bits;
  f.M = mantissa_bits;
  f.E = q_bits - 1 - mantissa_bits;
  f.bias = (1 << (f.E - 1)) - 1;
  return f;
}

// Largest magnitude (q_range) and smallest (2^-bias), exact floats built from their bits.
DSQ_HD float ds_fp_max(const DsFp& f) {
  const uint32_t top = (uint32_t)((1 << f.E) - 1 - f.bias + 127);
  return bits_float((top << 23) | ((((1u << f.M) - 1u)) << (23 - f.M)));
}
DSQ_HD float ds_fp_min(const DsFp& f) { return bits_float((uint32_t)(127 - f.bias) << 23); }

// Elements per code unit and its bytes.
DSQ_HD int ds_fp_unit(int bits) { return bits == 8 ? 1 : (bits == 6 ? 4 : 2); }
DSQ_HD int ds_fp_unit_bytes(int bits) { return ds_fp_unit(bits) * bits / 8; }

// ---------------------------------------------------------------------------------------------
// Decoding: the code's value as a float (exact: at most 8 significant bits, exponents -15..16).
// ---------------------------------------------------------------------------------------------
DSQ_HD float ds_fp_value(uint32_t code, const DsFp& f) {
  const uint32_t s = (code >> (f.E + f.M)) & 1u;
  const uint32_t e = (code >> f.M) & ((1u << f.E) - 1u);
  const uint32_t m = code & ((1u << f.M) - 1u);
  return bits_float((s << 31) | ((e + (uint32_t)(127 - f.bias)) << 23) | (m << (23 - f.M)));
}

// One decoded element in output format Fmt: T(f32(value · scale)) as DeepSpeed computes it (value
// built exactly, float32 product, one rounding to T); float64 output takes the exact product. A
// NaN scale gives the canonical NaN; an infinite one ±Inf.
template <class Fmt> DSQ_HD typename Fmt::storage ds_fp_decode(uint32_t code, float scale, const DsFp& f) {
  typedef typename Fmt::compute C;
  const C y = (C)ds_fp_value(code, f) * (C)scale;
  return y == y ? Fmt::store(y) : canonical_nan<Fmt>();
}

// ---------------------------------------------------------------------------------------------
// Encoding.
// ---------------------------------------------------------------------------------------------
template <class C> struct IeeeBits;
template <> struct IeeeBits<float> {
  typedef uint32_t U;
  static const int mant = 23, width = 32, bias = 127;
  static DSQ_HD U of(float v) { return float_bits(v); }
};
template <> struct IeeeBits<double> {
  typedef uint64_t U;
  static const int mant = 52, width = 64, bias = 1023;
  static DSQ_HD U of(double v) { return double_bits(v); }
};

// Per-group parameters: the scaled value is v = C(C(x·pre)·inv); scale is stored in the record.
template <class C> struct DsFpParams {
  C pre;      // 1, or 2^64 for a group so small that q_range / absmax overflows C
  C inv;
  float scale;
};

// inv = C(q_range / absmax), pre = 1 (DeepSpeed's formula). Where that quotient could overflow
// (absmax below q_range·2^-127: float32 subnormal-size groups; float64 below ~1e-306), x and
// absmax are first scaled by 2^64 (exactly), so v is still x / (absmax / q_range) rounded, not x·max.
// scale = f32(absmax / q_range) in one rounding (the double quotient of two floats rounds to the
// correctly rounded float; a float64 group beyond float32's range saturates at float32's largest
// value, one below its smallest subnormal stores 0). A group without a nonzero finite element:
// inv = 1, scale = 0.
template <class C> DSQ_HD C half_min_normal();   // 2^-127 (float), 2^-1023 (double): exact
template <> DSQ_HD float half_min_normal<float>() { return 5.877471754111437539843683e-39f; }
template <> DSQ_HD double half_min_normal<double>() { return 1.112536929253600691545116e-308; }

template <class C> DSQ_HD DsFpParams<C> ds_fp_params(C absmax, const DsFp& f) {
  DsFpParams<C> p;
  const C range = (C)ds_fp_max(f);
  // absmax >= range·2^-127 (2^-1023) keeps range / absmax below 2^127 (2^1023): no overflow.
  // Below that, pre-scaling by 2^64 is exact and gives the same v wherever both are finite, so
  // the test needs no division (one division per group: the device's is a call).
  const bool tiny = absmax < range * half_min_normal<C>();
  p.pre = tiny ? (C)18446744073709551616.0 : (C)1;   // 2^64
  p.inv = absmax == (C)0 ? (C)1 : range / (absmax * p.pre);
  p.scale = absmax == (C)0 ? 0.0f : to_float_saturated((double)absmax / (double)range);
  return p;
}

// The scaled value of one element (compute type).
template <class C> DSQ_HD C ds_fp_scaled(C x, const DsFpParams<C>& p) { return (x * p.pre) * p.inv; }

// The code of the scaled value v (any value: NaN -> 0, ±Inf -> ±q_range). u in [0, 1) is the
// element's uniform for stochastic rounding, ignored otherwise.
template <class C> DSQ_HD uint32_t ds_fp_encode(C v, const DsFp& f, bool stochastic, float u) {
  typedef IeeeBits<C> B;
  typedef typename B::U U;
  const U bits = B::of(v);
  const uint32_t sign_bit = (uint32_t)(bits >> (B::width - 1));
  const uint32_t top_mag = (1u << (f.E + f.M)) - 1u;
  const C a = v < (C)0 ? -v : v;
  const C lo = (C)ds_fp_min(f);
  uint32_t sign = sign_bit, mag;
  if (v != v) {
    sign = 0u;
    mag = 0u;
  } else if (a >= (C)ds_fp_max(f)) {
    mag = top_mag;
  } else if (a < lo) {
    // between -2^-bias and +2^-bias: nearest is the code of x's sign; stochastic picks + with
    // probability (v + lo) / (2 lo)
    if (stochastic) sign = (C)u < (v + lo) * ((C)0.5 / lo) ? 0u : 1u;
    mag = 0u;
  } else {
    // a is a normal number of C in a binade of the code space: keep M mantissa bits, rounding
    // the dropped field (exact integer arithmetic on the bits; a carry moves to the next binade)
    const int shift = B::mant - f.M;
    const U abits = bits & ~((U)1 << (B::width - 1));
    const U keep = abits >> shift;
    const U rest = abits & (((U)1 << shift) - 1);
    const U half = (U)1 << (shift - 1);
    bool up;
    if (stochastic) {
      // rest / 2^shift is exact in C; u has 24 random bits, so for float inputs (shift <= 22)
      // P(up) = rest / 2^shift exactly
      up = (C)u < (C)rest / (C)((U)1 << shift);
    } else {
      up = rest > half || (rest == half && (keep & 1u));
    }
    const U r = keep + (up ? 1u : 0u);
    const U code = r - ((U)(B::bias - f.bias) << f.M);
    mag = code > (U)top_mag ? top_mag : (uint32_t)code;
  }
  return (sign << (f.E + f.M)) | mag;
}

// ---------------------------------------------------------------------------------------------
// Records.
// ---------------------------------------------------------------------------------------------
DSQ_HD int64_t ds_fp_code_bytes(int64_t group_size, int bits) { return group_size * bits / 8; }
DSQ_HD int64_t ds_fp_record_bytes(int64_t group_size, int bits) { return ds_fp_code_bytes(group_size, bits) + 4; }

// The codes of a unit as the little-endian integer of its bytes (LSB-first bit stream): code k of
// the unit goes to bits [k·bits, (k+1)·bits).
DSQ_HD uint32_t ds_fp_pack(uint32_t acc, uint32_t code, int k, int bits) {
  return acc | ((code & ((1u << bits) - 1u)) << (k * bits));
}
DSQ_HD uint32_t ds_fp_unpack(uint32_t packed, int k, int bits) { return (packed >> (k * bits)) & ((1u << bits) - 1u); }

DSQ_HD void ds_fp_store_bytes(uint8_t* p, uint32_t v, int nbytes) {
  for (int i = 0; i < nbytes; ++i) p[i] = (uint8_t)(v >> (8 * i));
}
DSQ_HD uint32_t ds_fp_load_bytes(const uint8_t* p, int nbytes) {
  uint32_t v = 0;
  for (int i = 0; i < nbytes; ++i) v |= (uint32_t)p[i] << (8 * i);
  return v;
}

// The scale of a record (byte-wise: records need not be 4-byte aligned).
DSQ_HD void ds_fp_store_scale(uint8_t* record, int64_t code_bytes, float s) {
  ds_fp_store_bytes(record + code_bytes, float_bits(s), 4);
}
DSQ_HD float ds_fp_load_scale(const uint8_t* record, int64_t code_bytes) {
  return bits_float(ds_fp_load_bytes(record + code_bytes, 4));
}

// The source element of output element t: t itself, or, with `rows` (selective dequantization),
// element c of row rows[t / row_elems] (rows of row_elems elements).
DSQ_HD int64_t ds_fp_source(int64_t t, const int64_t* rows, int64_t row_elems) {
  return rows == nullptr ? t : rows[t / row_elems] * row_elems + t % row_elems;
}

// ---------------------------------------------------------------------------------------------
// Code spaces: what the record kernels call to scale, encode and decode. DsSpace is DeepSpeed's
// (above; the format is a run-time value); OcpSpace<Fp> the OCP format Fp of dsq_fp.cuh, with
// absmax scaling and saturation, as dsquant.fp_quantize(x, group_size, fmt) computes them.
// ---------------------------------------------------------------------------------------------
struct DsSpace {
  DsFp f;
  DSQ_HD DsSpace(int bits, int mantissa) : f(ds_fp_format(bits, mantissa)) {}
  template <class C> struct Params { DsFpParams<C> p; };
  template <class C> DSQ_HD Params<C> params(C absmax) const { return Params<C>{ds_fp_params(absmax, f)}; }
  template <class C> DSQ_HD float stored(const Params<C>& q) const { return q.p.scale; }
  template <class C> DSQ_HD uint32_t encode(C x, const Params<C>& q, bool stochastic, float u) const {
    return ds_fp_encode(ds_fp_scaled(x, q.p), f, stochastic, u);
  }
  template <class Fmt> DSQ_HD typename Fmt::storage decode(uint32_t code, float scale) const {
    return ds_fp_decode<Fmt>(code, scale, f);
  }
};

template <class Fp> struct OcpSpace {
  DSQ_HD OcpSpace(int, int) {}
  template <class C> struct Params { FpScale<C> s; };
  template <class C> DSQ_HD Params<C> params(C absmax) const { return Params<C>{fp_scale_absmax<Fp, C>(absmax)}; }
  template <class C> DSQ_HD float stored(const Params<C>& q) const { return q.s.stored; }
  template <class C> DSQ_HD uint32_t encode(C x, const Params<C>& q, bool stochastic, float u) const {
    return fp_encode<Fp, C>(x * q.s.mul, true, stochastic, u);
  }
  template <class Fmt> DSQ_HD typename Fmt::storage decode(uint32_t code, float scale) const {
    return fp_dequant_element<Fp, Fmt>(code, fp_dq_absmax(scale));
  }
};

// X(index, space type) for every code space of the record kernels, in the order of
// dsquant.core.fp_ds.SPACES.
#define DSQ_FOR_EACH_FP_DS_SPACE(X) \
  X(0, dsq::DsSpace) X(1, dsq::OcpSpace<dsq::FpE4M3>) X(2, dsq::OcpSpace<dsq::FpE5M2>) \
  X(3, dsq::OcpSpace<dsq::FpE3M2>) X(4, dsq::OcpSpace<dsq::FpE2M1>)
constexpr int NUM_FP_DS_SPACES = 5;

}  // namespace dsq
