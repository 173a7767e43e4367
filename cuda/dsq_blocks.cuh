// dsq_blocks.cuh — device building blocks shared by the kernel files (dsq_fake.cu, dsq_int.cu):
// 16-byte units of elements, team reductions of group statistics, and the statistics pass of
// groups too large for one block. Statistics come from dsq_math.cuh (order keys, exact and
// order-free), so any split of a group over threads, blocks or chunks gives the same result.
//
// The kernels here (stats_clear, stats_chunks) are instantiated in the dsq_fake.cu module
// (dsquant/_kernels.py); integer quantization launches them from there.
#pragma once
#include "dsq_math.cuh"

namespace dsq {

#define DSQ_DEV __device__ __forceinline__

// Every kernel runs with at most this many threads per block (dsquant/_launch.py MAX_THREADS),
// so ptxas may give each thread up to 255 registers without making a launch impossible.
#define DSQ_MAX_THREADS 256

// The elements one thread moves per step: one 16-byte vector, or two for float64 so that a unit is
// always a whole number of Philox blocks (8, 8, 4 and 4 elements).
template <class Fmt> struct Unit {
  typedef typename Fmt::storage T;
  static constexpr int N = sizeof(T) == 8 ? 4 : 16 / (int)sizeof(T);
  static constexpr int Q = N * (int)sizeof(T) / 16;
  union {
    uint4 q[Q];
    T v[N];
  };
};

DSQ_DEV bool aligned16(const void* p) { return ((unsigned long long)p & 15ull) == 0; }

// Loads the `avail` (may be <= 0) elements of a unit at p; lanes past avail are not read.
template <class Fmt>
DSQ_DEV void load_unit(Unit<Fmt>& u, const typename Fmt::storage* p, int64_t avail, bool vec) {
  typedef typename Fmt::storage T;
  if (vec && avail >= Unit<Fmt>::N) {
#pragma unroll
    for (int i = 0; i < Unit<Fmt>::Q; ++i) u.q[i] = reinterpret_cast<const uint4*>(p)[i];
  } else {
#pragma unroll
    for (int k = 0; k < Unit<Fmt>::N; ++k) u.v[k] = k < avail ? p[k] : (T)0;
  }
}

// One 16-byte store to global memory (p 16-byte aligned). On the GPU it is written in PTX, as the
// CUDA headers' own __stcg/__stwb are: the unit's elements are written into the union one by
// one, and from there the compiler splits a plain uint4 assignment into 4- or 8-byte stores
// (seen in the SASS of fake_chunks, fake_resident and dequant_codes). Host and emulator: a plain store.
DSQ_DEV void store16(uint4* p, const uint4& v) {
#ifdef DSQ_GPU_ISA
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
#else
  *p = v;
#endif
}

template <class Fmt>
DSQ_DEV void store_unit(const Unit<Fmt>& u, typename Fmt::storage* p, int64_t avail, bool vec) {
  if (vec && avail >= Unit<Fmt>::N) {
#pragma unroll
    for (int i = 0; i < Unit<Fmt>::Q; ++i) store16(reinterpret_cast<uint4*>(p) + i, u.q[i]);
  } else {
#pragma unroll
    for (int k = 0; k < Unit<Fmt>::N; ++k)
      if (k < avail) p[k] = u.v[k];
  }
}

template <class Fmt> DSQ_DEV void stats_unit(Stats<Fmt>& s, const Unit<Fmt>& u, int64_t avail) {
  if (avail >= Unit<Fmt>::N) {  // the common case, without a test per element
#pragma unroll
    for (int k = 0; k < Unit<Fmt>::N; ++k) stats_add(s, u.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < Unit<Fmt>::N; ++k)
      if (k < avail) stats_add(s, u.v[k]);
  }
}

// ------------------------------------------------------------------------------ reductions
// Only the keys the scheme uses travel: absmax (symmetric) or max and min (asymmetric), so the
// compiler drops the computation of the others.
template <class Fmt, bool Sym> DSQ_DEV void shfl_merge(Stats<Fmt>& s, int lane_mask) {
  typedef typename Fmt::key K;
  if (Sym) {
    const K a = __shfl_xor_sync(0xffffffffu, s.absmax_key, lane_mask);
    s.absmax_key = a > s.absmax_key ? a : s.absmax_key;
  } else {
    const K hi = __shfl_xor_sync(0xffffffffu, s.max_key, lane_mask);
    const K lo = __shfl_xor_sync(0xffffffffu, s.min_key, lane_mask);
    s.max_key = hi > s.max_key ? hi : s.max_key;
    s.min_key = lo < s.min_key ? lo : s.min_key;
  }
}

// Reduces over a team of `team` threads (a power of two). A team of more than 32 threads is the
// whole block: every thread of the block calls this (both barriers are reached by all).
template <class Fmt, bool Sym> DSQ_DEV void team_reduce(Stats<Fmt>& s, int team, Stats<Fmt>* shared) {
  for (int o = (team < 32 ? team : 32) >> 1; o > 0; o >>= 1) shfl_merge<Fmt, Sym>(s, o);
  if (team > 32) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
      if (Sym) {
        shared[warp].absmax_key = s.absmax_key;
      } else {
        shared[warp].max_key = s.max_key;
        shared[warp].min_key = s.min_key;
      }
    }
    __syncthreads();
    s = stats_empty<Fmt>();
    if (lane < (int)(blockDim.x >> 5)) {
      if (Sym) {
        s.absmax_key = shared[lane].absmax_key;
      } else {
        s.max_key = shared[lane].max_key;
        s.min_key = shared[lane].min_key;
      }
    }
    for (int o = 16; o > 0; o >>= 1) shfl_merge<Fmt, Sym>(s, o);
    __syncthreads();  // `shared` is written again for the next group
  }
}

// ------------------------------------------------------------------------------ few large groups
// Statistics of groups too large for one block: stats_clear, then stats_chunks merges every
// chunk's statistics into its group's keys with integer atomics.
// keys[3g .. 3g+2] = absmax, max, min order keys of group g.
template <class Fmt> DSQ_DEV Stats<Fmt> load_stats(const typename Fmt::key* keys, int64_t g) {
  Stats<Fmt> s;
  s.absmax_key = keys[3 * g];
  s.max_key = keys[3 * g + 1];
  s.min_key = keys[3 * g + 2];
  return s;
}

template <class Fmt> DSQ_DEV void store_stats(typename Fmt::key* keys, int64_t g, const Stats<Fmt>& s) {
  keys[3 * g] = s.absmax_key;
  keys[3 * g + 1] = s.max_key;
  keys[3 * g + 2] = s.min_key;
}

template <class Fmt>
__global__ void __launch_bounds__(DSQ_MAX_THREADS) stats_clear(typename Fmt::key* keys, int64_t groups) {
  for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += (int64_t)gridDim.x * blockDim.x)
    store_stats(keys, g, stats_empty<Fmt>());
}

// A chunk of a group: elements [begin, begin + len) of the flat array. Its body is `units` whole
// units starting `head` elements in, 16-byte aligned in both arrays; head and tail are scalar.
struct Chunk {
  int64_t g, begin, len, head, units;
};

template <class Fmt>
DSQ_DEV Chunk chunk_of(int64_t item, int64_t S, int64_t chunk, const void* a, const void* b) {
  typedef typename Fmt::storage T;
  const int64_t per_group = (S + chunk - 1) / chunk;
  Chunk c;
  c.g = item / per_group;
  const int64_t k = item - c.g * per_group;
  c.begin = c.g * S + k * chunk;
  c.len = S - k * chunk < chunk ? S - k * chunk : chunk;
  const unsigned long long ma = ((unsigned long long)((const T*)a + c.begin)) & 15ull;
  const unsigned long long mb = ((unsigned long long)((const T*)b + c.begin)) & 15ull;
  if (ma != mb || ma % sizeof(T) != 0) {
    c.head = c.len;  // the two arrays can never be aligned together: all scalar
    c.units = 0;
    return c;
  }
  const int64_t head = ma == 0 ? 0 : (int64_t)((16 - ma) / sizeof(T));
  c.head = head < c.len ? head : c.len;
  c.units = (c.len - c.head) / Unit<Fmt>::N;
  return c;
}

template <class Fmt, bool Sym, int R>
__global__ void __launch_bounds__(DSQ_MAX_THREADS)
stats_chunks(const typename Fmt::storage* in, typename Fmt::key* keys, int64_t S, int64_t groups, int64_t chunk) {
  constexpr int N = Unit<Fmt>::N;
  __shared__ Stats<Fmt> partial[32];
  const int64_t items = groups * ((S + chunk - 1) / chunk);
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const Chunk c = chunk_of<Fmt>(item, S, chunk, in, in);
    const typename Fmt::storage* src = in + c.begin;
    Stats<Fmt> st = stats_empty<Fmt>();
    for (int64_t u0 = threadIdx.x; u0 < c.units; u0 += (int64_t)blockDim.x * R) {
      Unit<Fmt> x[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t u = u0 + (int64_t)r * blockDim.x;
        load_unit(x[r], src + c.head + u * N, u < c.units ? N : 0, true);
      }
#pragma unroll
      for (int r = 0; r < R; ++r) stats_unit(st, x[r], u0 + (int64_t)r * blockDim.x < c.units ? N : 0);
    }
    for (int64_t i = threadIdx.x; i < c.head; i += blockDim.x) stats_add(st, src[i]);
    for (int64_t i = c.head + c.units * N + threadIdx.x; i < c.len; i += blockDim.x) stats_add(st, src[i]);
    team_reduce<Fmt, Sym>(st, (int)blockDim.x, partial);
    if (threadIdx.x == 0) {
      typename Fmt::key* k = keys + 3 * c.g;
      if (Sym) {
        atomicMax(k, st.absmax_key);
      } else {
        atomicMax(k + 1, st.max_key);
        atomicMin(k + 2, st.min_key);
      }
    }
  }
}

}  // namespace dsq
