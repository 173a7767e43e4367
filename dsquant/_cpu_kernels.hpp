// CPU kernels: loops, threads and vector code around the scalar math of cuda/dsq_math.cuh.
// Nothing numeric is defined here; every formula comes from the shared headers, so these loops
// produce the same bits as the CUDA kernels.
//
// Work split (OpenMP): groups smaller than kLargeGroup are whole work items (statistics and
// quantization in one visit, the group stays in cache); larger groups are cut into chunks of
// kChunk elements processed in two parallel passes (partial statistics, then quantization), so a
// single huge group uses every thread.
#pragma once
#include <omp.h>
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "dsq_math.cuh"
#include "dsq_philox.cuh"

namespace dsq_cpu {

using dsq::Stats;
using dsq::FakeParams;
using dsq::IntParams;

const int64_t kTile = 512;          // elements per inner tile (random words are drawn per tile)
const int64_t kLargeGroup = 1 << 15;
const int64_t kChunk = 1 << 15;

// ---------------------------------------------------------------- statistics of a range
template <class Fmt>
inline Stats<Fmt> range_stats(const typename Fmt::storage* x, int64_t n) {
  typedef typename Fmt::key K;
  Stats<Fmt> init = dsq::stats_empty<Fmt>();
  // independent accumulators in plain locals, so the compiler vectorizes the reduction
  K a = init.absmax_key, hi = init.max_key, lo = init.min_key;
#pragma omp simd reduction(max : a, hi) reduction(min : lo)
  for (int64_t i = 0; i < n; ++i) {
    bool ok = Fmt::finite(x[i]);
    K ak = ok ? Fmt::abs_key(x[i]) : (K)0;
    K k = Fmt::key_of(x[i]);
    K kh = ok ? k : init.max_key, kl = ok ? k : init.min_key;
    a = ak > a ? ak : a;
    hi = kh > hi ? kh : hi;
    lo = kl < lo ? kl : lo;
  }
  Stats<Fmt> s;
  s.absmax_key = a; s.max_key = hi; s.min_key = lo;
  return s;
}

// ---------------------------------------------------------------- uniforms for a tile
// u[j] = uniform of stream position pos + j, j < n <= kTile.
inline void fill_uniforms(uint64_t seed, uint64_t pos, int64_t n, float* u) {
  uint32_t words[kTile + 8];
  uint64_t first_block = pos >> 2;
  int64_t nblocks = (int64_t)(((pos + (uint64_t)n + 3) >> 2) - first_block);
  for (int64_t b = 0; b < nblocks; ++b) {
    dsq::U32x4 w = dsq::philox_block(seed, first_block + (uint64_t)b);
    words[4 * b + 0] = w.v[0]; words[4 * b + 1] = w.v[1];
    words[4 * b + 2] = w.v[2]; words[4 * b + 3] = w.v[3];
  }
  const uint32_t* start = words + (pos & 3u);
  for (int64_t j = 0; j < n; ++j) u[j] = dsq::uniform_from_word(start[j]);
}

// ---------------------------------------------------------------- fake quantization of a range
template <class Fmt, bool Symmetric, bool Stochastic>
inline void range_fake(const typename Fmt::storage* in, typename Fmt::storage* out, int64_t n,
                       const FakeParams<typename Fmt::compute>& p, uint64_t seed, uint64_t pos) {
  float u[kTile];
  for (int64_t t0 = 0; t0 < n; t0 += kTile) {
    int64_t m = std::min(kTile, n - t0);
    if (Stochastic) fill_uniforms(seed, pos + (uint64_t)t0, m, u);
    const typename Fmt::storage* src = in + t0;
    typename Fmt::storage* dst = out + t0;
#pragma omp simd
    for (int64_t j = 0; j < m; ++j)
      dst[j] = dsq::fake_element<Fmt>(src[j], p, Symmetric, Stochastic, Stochastic ? u[j] : 0.0f);
  }
}

struct FakeArgs {
  const void* in;
  void* out;
  int64_t n, groups;
  int bits;
  bool symmetric, stochastic;
  uint64_t seed, offset;
  int threads;
};

template <class Fmt, bool Symmetric, bool Stochastic>
void fake_quantize_typed(const FakeArgs& a) {
  typedef typename Fmt::storage T;
  typedef typename Fmt::compute C;
  const T* in = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  const int64_t S = a.n / a.groups;
  if (S < kLargeGroup) {
#pragma omp parallel for schedule(static) num_threads(a.threads)
    for (int64_t g = 0; g < a.groups; ++g) {
      const int64_t base = g * S;
      FakeParams<C> p = dsq::fake_params(range_stats<Fmt>(in + base, S), a.bits, Symmetric);
      range_fake<Fmt, Symmetric, Stochastic>(in + base, out + base, S, p, a.seed, a.offset + (uint64_t)base);
    }
    return;
  }
  const int64_t per_group = (S + kChunk - 1) / kChunk;
  const int64_t items = a.groups * per_group;
  std::vector<Stats<Fmt>> partial(items);
  std::vector<FakeParams<C>> params(a.groups);
#pragma omp parallel num_threads(a.threads)
  {
#pragma omp for schedule(static)
    for (int64_t k = 0; k < items; ++k) {
      int64_t g = k / per_group, c = k % per_group;
      int64_t begin = g * S + c * kChunk, len = std::min(kChunk, S - c * kChunk);
      partial[k] = range_stats<Fmt>(in + begin, len);
    }
#pragma omp for schedule(static)
    for (int64_t g = 0; g < a.groups; ++g) {
      Stats<Fmt> st = partial[g * per_group];
      for (int64_t c = 1; c < per_group; ++c) dsq::stats_merge(st, partial[g * per_group + c]);
      params[g] = dsq::fake_params(st, a.bits, Symmetric);
    }
#pragma omp for schedule(static)
    for (int64_t k = 0; k < items; ++k) {
      int64_t g = k / per_group, c = k % per_group;
      int64_t begin = g * S + c * kChunk, len = std::min(kChunk, S - c * kChunk);
      range_fake<Fmt, Symmetric, Stochastic>(in + begin, out + begin, len, params[g], a.seed,
                                             a.offset + (uint64_t)begin);
    }
  }
}

// Dispatch table: [dtype][symmetric][stochastic] -> implementation.
typedef void (*FakeFn)(const FakeArgs&);
#define DSQ_FAKE_ROW(F) \
  {{&fake_quantize_typed<F, false, false>, &fake_quantize_typed<F, false, true>}, \
   {&fake_quantize_typed<F, true, false>, &fake_quantize_typed<F, true, true>}}
static const FakeFn kFakeTable[4][2][2] = {
    DSQ_FAKE_ROW(dsq::F16), DSQ_FAKE_ROW(dsq::BF16), DSQ_FAKE_ROW(dsq::F32), DSQ_FAKE_ROW(dsq::F64)};
#undef DSQ_FAKE_ROW

inline void fake_quantize(int dtype, const FakeArgs& a) {
  if (a.n == 0) return;
  kFakeTable[dtype][a.symmetric ? 1 : 0][a.stochastic ? 1 : 0](a);
}

// ---------------------------------------------------------------- integer quantization
// The loops that touch elements are compiled twice, for AVX2 and for the x86-64 baseline, and
// the running CPU picks one (GCC/Clang function multiversioning, Linux/ELF only). SSE2 has no
// packed 32-bit integer min/max or blend, which the statistics and the clamp need. The results
// are identical: IEEE operations only, and no FMA contraction (-ffp-contract=off).
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define DSQ_CPU_MULTIVERSION __attribute__((target_clones("avx2", "default"), noinline))
#else
#define DSQ_CPU_MULTIVERSION
#endif

struct IntQuantArgs {
  const void* in;
  uint8_t* q;        // ceil(n / per) bytes
  float* params;     // [groups, symmetric ? 1 : 2]
  int64_t n, groups;
  int bits;
  bool symmetric;
  int threads;
};

// Codes of the flat elements [begin, end) into their bytes, each element with the params of its
// own group (params[g - g0] for group g). begin is a multiple of Per, so only whole bytes are
// written and work items that start on byte boundaries never share a byte.
template <class Fmt, int Per>
inline void range_int_codes(const typename Fmt::storage* in, uint8_t* q, int64_t begin, int64_t end, int64_t S,
                            const IntParams<typename Fmt::compute>* params, int64_t g0) {
  if (Per == 1) {
    for (int64_t i = begin; i < end;) {
      const int64_t g = i / S, stop = std::min(end, (g + 1) * S);
      const IntParams<typename Fmt::compute> p = params[g - g0];
#pragma omp simd
      for (int64_t k = i; k < stop; ++k) q[k] = (uint8_t)dsq::int_code<Fmt>(in[k], p);
      i = stop;
    }
    return;
  }
  int32_t codes[kTile];   // a tile of codes, then packed: kTile is a multiple of every Per
  for (int64_t t0 = begin; t0 < end; t0 += kTile) {
    const int64_t m = std::min(kTile, end - t0);
    for (int64_t i = t0; i < t0 + m;) {
      const int64_t g = i / S, stop = std::min(t0 + m, (g + 1) * S);
      const IntParams<typename Fmt::compute> p = params[g - g0];
#pragma omp simd
      for (int64_t k = i; k < stop; ++k) codes[k - t0] = dsq::int_code<Fmt>(in[k], p);
      i = stop;
    }
    const int64_t nbytes = (m + Per - 1) / Per;
    for (int64_t j = m; j < nbytes * Per; ++j) codes[j] = 0;   // ragged end: zero fields
    uint8_t* dst = q + t0 / Per;
#pragma omp simd
    for (int64_t b = 0; b < nbytes; ++b) {
      uint32_t byte = 0;
      for (int j = 0; j < Per; ++j) byte |= dsq::code_to_field(codes[b * Per + j], Per, j);
      dst[b] = (uint8_t)byte;
    }
  }
}

template <class C> inline void store_int_params(const IntQuantArgs& a, int64_t g, const IntParams<C>& p) {
  if (a.symmetric) {
    a.params[g] = p.p0;
  } else {
    a.params[2 * g] = p.p0;
    a.params[2 * g + 1] = p.p1;
  }
}

// Statistics of a range for symmetric integer codes, which need only absmax: a third of the work
// of range_stats (max and min are left empty).
template <class Fmt>
inline Stats<Fmt> range_absmax(const typename Fmt::storage* x, int64_t n) {
  typedef typename Fmt::key K;
  Stats<Fmt> s = dsq::stats_empty<Fmt>();
  K a = s.absmax_key;
#pragma omp simd reduction(max : a)
  for (int64_t i = 0; i < n; ++i) {
    K ak = Fmt::finite(x[i]) ? Fmt::abs_key(x[i]) : (K)0;
    a = ak > a ? ak : a;
  }
  s.absmax_key = a;
  return s;
}

template <class Fmt>
inline Stats<Fmt> int_range_stats(const typename Fmt::storage* x, int64_t n, bool symmetric) {
  return symmetric ? range_absmax<Fmt>(x, n) : range_stats<Fmt>(x, n);
}

// Asks for the cache lines kPrefetchAhead bytes after [p, p + bytes): the per-group work between
// loads leaves too few loads in flight to stream from memory at full speed. (A hint: addresses
// past the end of the array are harmless.)
const int64_t kPrefetchAhead = 4096;
inline void prefetch_ahead(const void* p, int64_t bytes) {
#if defined(__GNUC__)
  const uintptr_t c = (uintptr_t)p + kPrefetchAhead;   // integer arithmetic: may pass the end
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch((const void*)(c + off));
#else
  (void)p; (void)bytes;
#endif
}

// Groups [g_begin, g_end), at most kBatchGroups of them and about kChunk elements: statistics
// and params of every group (one streaming pass), then the codes of all of them (a second pass,
// from cache). g_begin and g_end are multiples of the run of groups that fills whole bytes.
const int64_t kBatchGroups = 512;

template <class Fmt, int Per>
DSQ_CPU_MULTIVERSION void int_quantize_batch(const IntQuantArgs& a, int64_t g_begin, int64_t g_end) {
  typedef typename Fmt::storage T;
  const T* in = static_cast<const T*>(a.in);
  const int64_t S = a.n / a.groups;
  IntParams<typename Fmt::compute> p[kBatchGroups];
  for (int64_t g = g_begin; g < g_end; ++g) {
    prefetch_ahead(in + g * S, S * (int64_t)sizeof(T));
    p[g - g_begin] = dsq::int_params(int_range_stats<Fmt>(in + g * S, S, a.symmetric), a.bits, a.symmetric);
    store_int_params(a, g, p[g - g_begin]);
  }
  range_int_codes<Fmt, Per>(in, a.q, g_begin * S, g_end * S, S, p, g_begin);
}

template <class Fmt>
DSQ_CPU_MULTIVERSION Stats<Fmt> chunk_stats(const typename Fmt::storage* in, int64_t n, bool symmetric) {
  return int_range_stats<Fmt>(in, n, symmetric);
}

template <class Fmt, int Per>
DSQ_CPU_MULTIVERSION void chunk_int_codes(const IntQuantArgs& a, int64_t begin, int64_t end,
                                          const IntParams<typename Fmt::compute>* params) {
  range_int_codes<Fmt, Per>(static_cast<const typename Fmt::storage*>(a.in), a.q, begin, end, a.n / a.groups, params, 0);
}

inline int64_t gcd64(int64_t a, int64_t b) { while (b) { int64_t t = a % b; a = b; b = t; } return a; }

template <class Fmt, int Per>
void int_quantize_typed(const IntQuantArgs& a) {
  typedef typename Fmt::storage T;
  typedef typename Fmt::compute C;
  const T* in = static_cast<const T*>(a.in);
  const int64_t S = a.n / a.groups;
  if (S < kLargeGroup) {
    // Batches of whole runs (the shortest run of groups that fills whole bytes: Per / gcd(S, Per)
    // groups) are the parallel work items, so no two threads write the same byte.
    const int64_t run = Per / gcd64(S, Per);
    const int64_t batch = run * std::max<int64_t>(1, std::min(kChunk / std::max<int64_t>(1, run * S), kBatchGroups / run));
    const int64_t batches = (a.groups + batch - 1) / batch;
#pragma omp parallel for schedule(static) num_threads(a.threads) if (batches > 1)
    for (int64_t b = 0; b < batches; ++b)
      int_quantize_batch<Fmt, Per>(a, b * batch, std::min(a.groups, (b + 1) * batch));
    return;
  }
  // Large groups: partial statistics per chunk, params per group, then codes per chunk of the
  // flat input (kChunk is a multiple of Per, so chunks start on byte boundaries).
  const int64_t per_group = (S + kChunk - 1) / kChunk;
  const int64_t items = a.groups * per_group;
  const int64_t flat_chunks = (a.n + kChunk - 1) / kChunk;
  std::vector<Stats<Fmt>> partial(items);
  std::vector<IntParams<C>> params(a.groups);
#pragma omp parallel num_threads(a.threads)
  {
#pragma omp for schedule(static)
    for (int64_t k = 0; k < items; ++k) {
      int64_t g = k / per_group, c = k % per_group;
      int64_t begin = g * S + c * kChunk, len = std::min(kChunk, S - c * kChunk);
      partial[k] = chunk_stats<Fmt>(in + begin, len, a.symmetric);
    }
#pragma omp for schedule(static)
    for (int64_t g = 0; g < a.groups; ++g) {
      Stats<Fmt> st = partial[g * per_group];
      for (int64_t c = 1; c < per_group; ++c) dsq::stats_merge(st, partial[g * per_group + c]);
      params[g] = dsq::int_params(st, a.bits, a.symmetric);
      store_int_params(a, g, params[g]);
    }
#pragma omp for schedule(static)
    for (int64_t c = 0; c < flat_chunks; ++c)
      chunk_int_codes<Fmt, Per>(a, c * kChunk, std::min(a.n, (c + 1) * kChunk), params.data());
  }
}

struct IntDequantArgs {
  const uint8_t* q;
  const float* params;   // [groups, symmetric ? 1 : 2]
  void* out;             // n elements of the output dtype
  int64_t n, groups;
  int bits;
  bool symmetric;
  int threads;
};

// Values of the flat elements [begin, end), begin a multiple of Per. Packed codes are unpacked
// a tile at a time into a plain array first, so both loops vectorize.
template <class Fmt, int Per, bool Symmetric>
DSQ_CPU_MULTIVERSION void int_dequantize_range(const IntDequantArgs& a, int64_t begin, int64_t end) {
  typedef typename Fmt::storage T;
  typedef typename Fmt::compute C;
  T* out = static_cast<T*>(a.out);
  const int64_t S = a.n / a.groups;
  int32_t codes[kTile];
  for (int64_t t0 = begin; t0 < end; t0 += kTile) {
    const int64_t m = std::min(kTile, end - t0);
    const uint8_t* src = a.q + t0 / Per;
    if (Per == 1) {
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) codes[j] = (int32_t)(int8_t)src[j];
    } else {
      const int64_t nbytes = (m + Per - 1) / Per;
#pragma omp simd
      for (int64_t b = 0; b < nbytes; ++b)
        for (int j = 0; j < Per; ++j) codes[b * Per + j] = dsq::field_signed(src[b], Per, j);
    }
    for (int64_t i = t0; i < t0 + m;) {
      const int64_t g = i / S, stop = std::min(t0 + m, (g + 1) * S);
      const float p0 = a.params[Symmetric ? g : 2 * g], p1 = Symmetric ? 0.0f : a.params[2 * g + 1];
      const int32_t* c = codes - t0;
#pragma omp simd
      for (int64_t k = i; k < stop; ++k) out[k] = Fmt::store((C)dsq::int_dequant(c[k], p0, p1, Symmetric));
      i = stop;
    }
  }
}

template <class Fmt, int Per, bool Symmetric>
void int_dequantize_typed(const IntDequantArgs& a) {
  const int64_t chunks = (a.n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) num_threads(a.threads) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c)
    int_dequantize_range<Fmt, Per, Symmetric>(a, c * kChunk, std::min(a.n, (c + 1) * kChunk));
}

// Dispatch tables: [dtype][codes per byte 1, 2, 4] (and [symmetric] for dequantization).
inline int per_index(int bits) {
  int per = dsq::int_codes_per_byte(bits);
  return per == 1 ? 0 : (per == 2 ? 1 : 2);
}

typedef void (*IntQuantFn)(const IntQuantArgs&);
#define DSQ_INTQ_ROW(F) {&int_quantize_typed<F, 1>, &int_quantize_typed<F, 2>, &int_quantize_typed<F, 4>}
static const IntQuantFn kIntQuantTable[4][3] = {
    DSQ_INTQ_ROW(dsq::F16), DSQ_INTQ_ROW(dsq::BF16), DSQ_INTQ_ROW(dsq::F32), DSQ_INTQ_ROW(dsq::F64)};
#undef DSQ_INTQ_ROW

typedef void (*IntDequantFn)(const IntDequantArgs&);
#define DSQ_INTD_PER(F, P) {&int_dequantize_typed<F, P, false>, &int_dequantize_typed<F, P, true>}
#define DSQ_INTD_ROW(F) {DSQ_INTD_PER(F, 1), DSQ_INTD_PER(F, 2), DSQ_INTD_PER(F, 4)}
static const IntDequantFn kIntDequantTable[4][3][2] = {
    DSQ_INTD_ROW(dsq::F16), DSQ_INTD_ROW(dsq::BF16), DSQ_INTD_ROW(dsq::F32), DSQ_INTD_ROW(dsq::F64)};
#undef DSQ_INTD_ROW
#undef DSQ_INTD_PER

inline void int_quantize(int dtype, const IntQuantArgs& a) { kIntQuantTable[dtype][per_index(a.bits)](a); }

inline void int_dequantize(int dtype, const IntDequantArgs& a) {
  if (a.n == 0) return;
  kIntDequantTable[dtype][per_index(a.bits)][a.symmetric ? 1 : 0](a);
}

// DeepSpeed's experimental unsigned-code dequantization to float16 (bits 4 or 8).
struct UintHalfArgs {
  const uint8_t* q;
  const uint16_t* scale;     // [num_group] float16
  const uint16_t* minimum;   // [num_group] float16
  uint16_t* out;             // [num_group, group_size] float16
  int64_t num_group, group_size;
  int bits;
  int threads;
};

inline void uint_dequantize_half(const UintHalfArgs& a) {
  const int per = dsq::int_codes_per_byte(a.bits);
  const int64_t n = a.num_group * a.group_size;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) num_threads(a.threads) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t end = std::min(n, (c + 1) * kChunk);
    for (int64_t i = c * kChunk; i < end;) {
      const int64_t g = i / a.group_size, stop = std::min(end, (g + 1) * a.group_size);
      const uint16_t s = a.scale[g], m = a.minimum[g];
      for (int64_t k = i; k < stop; ++k)
        a.out[k] = dsq::uint_dequant_half(dsq::field_unsigned(a.q[k / per], per, (int)(k % per)), s, m);
      i = stop;
    }
  }
}

// ---------------------------------------------------------------- strided copies
// Copies an n-d array of `itemsize`-byte elements between two layouts (strides in elements, may
// be zero or negative on the source). Used to make a contiguous copy of a non-contiguous input
// and to write results back into a non-contiguous destination.
inline void strided_copy(const char* src, const int64_t* src_strides, char* dst, const int64_t* dst_strides,
                         const int64_t* shape, int ndim, int itemsize, int threads) {
  if (ndim == 0) { std::copy(src, src + itemsize, dst); return; }
  int64_t outer = 1;
  for (int d = 0; d < ndim - 1; ++d) outer *= shape[d];
  const int64_t inner = shape[ndim - 1];
  if (outer == 0 || inner == 0) return;
  const int64_t ss = src_strides[ndim - 1] * itemsize, ds = dst_strides[ndim - 1] * itemsize;
#pragma omp parallel for schedule(static) num_threads(threads) if (outer * inner > (1 << 16))
  for (int64_t o = 0; o < outer; ++o) {
    int64_t rem = o, so = 0, dof = 0;
    for (int d = ndim - 2; d >= 0; --d) {
      int64_t i = rem % shape[d];
      rem /= shape[d];
      so += i * src_strides[d] * itemsize;
      dof += i * dst_strides[d] * itemsize;
    }
    const char* s = src + so;
    char* t = dst + dof;
    switch (itemsize) {
      case 2: for (int64_t i = 0; i < inner; ++i) *(uint16_t*)(t + i * ds) = *(const uint16_t*)(s + i * ss); break;
      case 4: for (int64_t i = 0; i < inner; ++i) *(uint32_t*)(t + i * ds) = *(const uint32_t*)(s + i * ss); break;
      case 8: for (int64_t i = 0; i < inner; ++i) *(uint64_t*)(t + i * ds) = *(const uint64_t*)(s + i * ss); break;
      default: for (int64_t i = 0; i < inner; ++i) std::copy(s + i * ss, s + i * ss + itemsize, t + i * ds);
    }
  }
}

inline int max_threads() { return omp_get_max_threads(); }

inline void* aligned_buffer(size_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) return nullptr;
#ifdef MADV_HUGEPAGE
  // Large results are written once, right away: transparent huge pages cut the page faults of
  // the first touch (what NumPy does for its own large arrays). Advisory; failures are harmless.
  if (bytes >= (size_t(4) << 20)) {
    uintptr_t first = ((uintptr_t)p + 4095) & ~(uintptr_t)4095, last = ((uintptr_t)p + bytes) & ~(uintptr_t)4095;
    if (last > first) madvise((void*)first, last - first, MADV_HUGEPAGE);
  }
#endif
  return p;
}

}  // namespace dsq_cpu
