// dsq_zeropp.cu — ZeRO++ communication ops on the GPU (dsquant.swizzle_quantize,
// quantized_reduction and their LoCo variants), bit-identical with the CPU path of
// dsquant/_cpu_zeropp.inc: every formula is a dsq:: function of dsq_math.cuh.
//
// As on the CPU, each op is a "source" of output values (value(i) of output value i) that one
// generic kernel quantizes group by group, exactly as dsquant.quantize would quantize an array of
// those values. A block owns a "run" of groups that fills whole code bytes (run = Per / gcd(S,
// Per) groups, at most 4), so no two blocks ever write one byte:
//   1. statistics of each group of the run (block reduction), params to global and shared memory;
//   2. codes, one byte per thread and step, each element with its own group's params; LoCo
//      updates its error element right after coding it (the same thread read it in step 1).
// Values are computed in both steps (the second read comes from L2); simple rather than fast:
// a group of any size is one block's work.
#include "dsq_blocks.cuh"   // team_reduce (block reduction of statistics)

namespace dsq {

#define DSQ_DEV __device__ __forceinline__
#define DSQ_MAX_THREADS 256   // dsquant/_launch.py MAX_THREADS

// a / b for a, b >= 0: 32-bit division when both fit (a 64-bit division is a subroutine call,
// whose saved registers show as spills in the LoCo reduction).
DSQ_DEV int64_t div(int64_t a, int64_t b) {
  return ((a | b) >> 32) == 0 ? (int64_t)((uint32_t)a / (uint32_t)b) : a / b;
}

// The statistics format of computed values of compute type C (CPU: ValueFmt).
template <class C> struct ValueFmtOf { typedef F32 type; };
template <> struct ValueFmtOf<double> { typedef F64 type; };
template <bool B, class A, class Z> struct IfElse { typedef A type; };   // std::conditional (no std headers in NVRTC)
template <class A, class Z> struct IfElse<false, A, Z> { typedef Z type; };

// A LoCo error buffer of format EFmt (F32, F16 or BF16) read and written as float, or none.
template <class EFmt, bool Loco> struct ErrorBuffer {
  typename EFmt::storage* e;
  DSQ_DEV float load(int64_t i) const { return Loco ? EFmt::load(e[i]) : 0.0f; }
  template <class C>
  DSQ_DEV void update(int64_t i, C v, int32_t code, const IntParams<C>& p, bool sym, float beta) const {
    if (!Loco) return;
    const C dq = (C)int_dequant_for<F32>(code, p.p0, p.p1, sym);
    e[i] = EFmt::store((float)loco_error<C>((C)EFmt::load(e[i]), v, dq, (C)beta));
  }
};

// Output value i of swizzle_quantize: input element swizzle_source_group(i / S)·S + i % S, plus
// the error when LoCo. Plain statistics are taken on the stored elements (as the CPU's
// range_stats), LoCo statistics on the computed values.
template <class Fmt, class EFmt, bool Loco> struct SwizzleSrc {
  typedef typename Fmt::compute C;
  typedef typename ValueFmtOf<C>::type VFmt;
  typedef typename IfElse<Loco, VFmt, Fmt>::type SFmt;
  const typename Fmt::storage* in;
  int64_t S, slice, pipe, nodes, dpn;
  ErrorBuffer<EFmt, Loco> err;
  float beta;
  DSQ_DEV typename Fmt::storage raw(int64_t i) const {
    return in[swizzle_source_group(i / S, slice, pipe, nodes, dpn) * S + i % S];
  }
  DSQ_DEV C value(int64_t i) const {
    const C x = Fmt::load(raw(i));
    return Loco ? x + (C)err.load(i) : x;
  }
  DSQ_DEV void stat(Stats<SFmt>& st, int64_t i) const {
    if constexpr (Loco) stats_add<SFmt>(st, value(i));
    else stats_add<SFmt>(st, raw(i));
  }
  DSQ_DEV void feedback(int64_t i, C v, int32_t code, const IntParams<C>& p, bool sym) const {
    err.update(i, v, code, p, sym, beta);
  }
};

// Output value i of quantized_reduction: the float32 sum over the D slabs, in slab order, of
// their dequantized value i (slab d, in-group h = i / S_in, params row d·gpt + h), plus the error.
template <class EFmt, bool Loco> struct ReduceSrc {
  typedef float C;
  typedef F32 SFmt;
  const uint8_t* q;
  const float* params;
  int64_t Vt, S_in, gpt, D;
  int per, shift;
  bool symmetric, half;
  ErrorBuffer<EFmt, Loco> err;
  float beta;
  DSQ_DEV float value(int64_t i) const {
    const int stride = symmetric ? 1 : 2;
    const int64_t h = div(i, S_in), byte = i >> shift;   // per = 1 << shift
    const int field = (int)(i & (per - 1));
    float sum = 0.0f;
    for (int64_t d = 0; d < D; ++d) {
      const int32_t code = field_signed(q[d * (Vt >> shift) + byte], per, field);
      const float* p = params + (d * gpt + h) * stride;
      sum = reduce_add(sum, int_dequant(code, p[0], symmetric ? 0.0f : p[1], symmetric), half);
    }
    return Loco ? sum + err.load(i) : sum;
  }
  DSQ_DEV void stat(Stats<SFmt>& st, int64_t i) const { stats_add<SFmt>(st, value(i)); }
  DSQ_DEV void feedback(int64_t i, float v, int32_t code, const IntParams<float>& p, bool sym) const {
    err.update(i, v, code, p, sym, beta);
  }
};

// Quantizes the n output values of `src` in `groups` groups of S (codes q, params [groups, 1|2]).
template <class Src>
DSQ_DEV void quantize_source(const Src& src, uint8_t* q, float* params, int64_t n, int64_t groups, int64_t run,
                             int bits, bool sym) {
  typedef typename Src::C C;
  typedef typename Src::SFmt SFmt;
  __shared__ Stats<SFmt> partial[32];
  __shared__ IntParams<C> prm[4];
  const int per = int_codes_per_byte(bits), shift = per == 4 ? 2 : per - 1;   // per = 1 << shift
  const int64_t S = n / groups;
  for (int64_t r = blockIdx.x; r < groups / run; r += gridDim.x) {
    for (int64_t k = 0; k < run; ++k) {
      const int64_t g = r * run + k;
      Stats<SFmt> st = stats_empty<SFmt>();
      for (int64_t i = threadIdx.x; i < S; i += blockDim.x) src.stat(st, g * S + i);
      if (sym) team_reduce<SFmt, true>(st, (int)blockDim.x, partial);
      else team_reduce<SFmt, false>(st, (int)blockDim.x, partial);
      if (threadIdx.x == 0) {
        const IntParams<C> p = int_params<SFmt>(st, bits, sym);
        prm[k] = p;
        store_int_params(params, g, p, sym);
      }
    }
    __syncthreads();   // prm is complete
    const int64_t first = r * run * S, b_end = ((r + 1) * run * S) >> shift;
    for (int64_t b = (first >> shift) + threadIdx.x; b < b_end; b += blockDim.x) {
      uint32_t byte = 0;
      for (int j = 0; j < per; ++j) {
        const int64_t i = b * per + j;
        const IntParams<C> p = prm[div(i - first, S)];
        const C v = src.value(i);
        const int32_t code = int_code_value(v, p);
        src.feedback(i, v, code, p, sym);
        byte |= code_to_field(code, per, j);
      }
      q[b] = (uint8_t)byte;
    }
    __syncthreads();   // prm is written again for the next run
  }
}

// Launch (dsquant/_launch.py): blockDim.x a multiple of 32 up to DSQ_MAX_THREADS, run groups per block.
template <class Fmt, class EFmt, bool Loco>
__global__ void __launch_bounds__(DSQ_MAX_THREADS)
swizzle_quant(const typename Fmt::storage* in, uint8_t* q, float* params, typename EFmt::storage* err, float beta,
              int64_t n, int64_t groups, int64_t run, int64_t pipe, int64_t nodes, int64_t dpn, int bits, bool sym) {
  SwizzleSrc<Fmt, EFmt, Loco> src;
  src.in = in;
  src.S = n / groups;
  src.slice = groups / (nodes * dpn * pipe);
  src.pipe = pipe;
  src.nodes = nodes;
  src.dpn = dpn;
  src.err.e = err;
  src.beta = beta;
  quantize_source(src, q, params, n, groups, run, bits, sym);
}

template <class EFmt, bool Loco>
__global__ void __launch_bounds__(DSQ_MAX_THREADS)
quant_reduce(const uint8_t* q_in, const float* params_in, uint8_t* q, float* params, typename EFmt::storage* err,
             float beta, int64_t n, int64_t in_groups, int64_t groups, int64_t devices, int64_t run, int bits,
             bool sym, bool half) {
  ReduceSrc<EFmt, Loco> src;
  src.q = q_in;
  src.params = params_in;
  src.Vt = n;
  src.gpt = in_groups / devices;
  src.S_in = n / src.gpt;
  src.D = devices;
  src.per = int_codes_per_byte(bits);
  src.shift = src.per == 4 ? 2 : src.per - 1;
  src.symmetric = sym;
  src.half = half;
  src.err.e = err;
  src.beta = beta;
  quantize_source(src, q, params, n, groups, run, bits, sym);
}

#undef DSQ_MAX_THREADS
#undef DSQ_DEV

}  // namespace dsq
