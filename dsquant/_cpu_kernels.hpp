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
  return p;
}

}  // namespace dsq_cpu
