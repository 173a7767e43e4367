// dsq_fake.cu — group-wise fake quantization on the GPU (dsquant.fake_quantize, ds_quantizer).
//
// Every formula comes from dsq_math.cuh and every random number from dsq_philox.cuh, the headers
// the CPU path compiles too, so GPU and CPU results are bit-identical. This file only decides
// which thread touches which element. Two regimes, chosen per call by dsquant/_launch.py:
//
// * fake_resident: a team of `team` threads (1 .. 256, a power of two) holds a whole group in
//   registers, R units per thread: one read and one write of every element. Teams of up to 32
//   threads share a warp and reduce with shuffles; a larger team is the whole block and also
//   reduces through shared memory.
// * stats_clear + stats_chunks + fake_chunks: groups too large for one block are cut into chunks;
//   each chunk's statistics are merged into per-group order keys with integer atomics (exact and
//   order-free), then a second pass quantizes every chunk with its group's parameters.
//
// Threads move data in "units" of 16-byte vectors when a group (or chunk body) is 16-byte aligned
// in both source and destination, and element by element otherwise (ragged or misaligned edges).
// All indices are 64-bit; loops are grid-stride with trip counts uniform across a block, so no
// barrier or shuffle is ever skipped by a thread that has no work.
#pragma once   // dsq_zeropp.cu includes it for its block reduction
#include "dsq_math.cuh"
#include "dsq_philox.cuh"

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

template <class Fmt>
DSQ_DEV void store_unit(const Unit<Fmt>& u, typename Fmt::storage* p, int64_t avail, bool vec) {
  if (vec && avail >= Unit<Fmt>::N) {
#pragma unroll
    for (int i = 0; i < Unit<Fmt>::Q; ++i) reinterpret_cast<uint4*>(p)[i] = u.q[i];
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

// u[k] = uniform of stream position pos + k: the words of the Philox blocks the unit straddles
// (one more block when pos is not a multiple of 4), selected without run-time array indexing.
// Positions wrap modulo 2^64 like every stream position, so block b is (pos + 4b) >> 2.
template <int N> DSQ_DEV void unit_uniforms(uint64_t seed, uint64_t pos, float (&u)[N]) {
  constexpr int NB = N / 4;
  uint32_t w[4 * NB + 4];
  const uint32_t r = (uint32_t)pos & 3u;
#pragma unroll
  for (int b = 0; b <= NB; ++b) {
    U32x4 x = {{0u, 0u, 0u, 0u}};
    if (b < NB || r != 0u) x = philox_block(seed, (pos + 4u * (uint64_t)b) >> 2);
#pragma unroll
    for (int i = 0; i < 4; ++i) w[4 * b + i] = x.v[i];
  }
#pragma unroll
  for (int k = 0; k < N; ++k)
    u[k] = uniform_from_word(r == 0u ? w[k] : r == 1u ? w[k + 1] : r == 2u ? w[k + 2] : w[k + 3]);
}

// Fake-quantizes the elements of a unit whose first element is at stream position pos.
template <class Fmt, bool Sym, bool Stoch>
DSQ_DEV void fake_unit(Unit<Fmt>& x, const FakeParams<typename Fmt::compute>& p, uint64_t seed, uint64_t pos) {
  constexpr int N = Unit<Fmt>::N;
  float u[N];
  if (Stoch) unit_uniforms<N>(seed, pos, u);
#pragma unroll
  for (int k = 0; k < N; ++k) x.v[k] = fake_element<Fmt>(x.v[k], p, Sym, Stoch, Stoch ? u[k] : 0.0f);
}

// Fake-quantizes one element at flat index e (scalar edges).
template <class Fmt, bool Sym, bool Stoch>
DSQ_DEV void fake_scalar(const typename Fmt::storage* in, typename Fmt::storage* out, int64_t e,
                         const FakeParams<typename Fmt::compute>& p, uint64_t seed, uint64_t offset) {
  const float u = Stoch ? uniform_at(seed, offset + (uint64_t)e) : 0.0f;
  out[e] = fake_element<Fmt>(in[e], p, Sym, Stoch, u);
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

// ------------------------------------------------------------------------------ many small groups
// Group g (of S elements) is held by team g: thread `rank` of the team holds units
// rank, rank + team, ..., rank + (R-1)·team of the group. Launch: team·R·N >= S, and either
// team <= 32 and blockDim.x a multiple of 32, or blockDim.x == team.
template <class Fmt, bool Sym, bool Stoch, int R>
__global__ void __launch_bounds__(DSQ_MAX_THREADS)
fake_resident(const typename Fmt::storage* in, typename Fmt::storage* out, int64_t S, int64_t groups, int team,
              int bits, uint64_t seed, uint64_t offset) {
  typedef typename Fmt::compute C;
  constexpr int N = Unit<Fmt>::N;
  __shared__ Stats<Fmt> partial[32];
  const int rank = (int)threadIdx.x & (team - 1);
  const int64_t teams = (int64_t)(blockDim.x / team);
  const int64_t mine = (int64_t)(threadIdx.x / team);
  for (int64_t first = (int64_t)blockIdx.x * teams; first < groups; first += (int64_t)gridDim.x * teams) {
    const int64_t g = first + mine;
    const bool live = g < groups;
    const int64_t base = live ? g * S : 0;
    const int64_t size = live ? S : 0;
    const bool vec = aligned16(in + base) && aligned16(out + base);
    Unit<Fmt> x[R];
    Stats<Fmt> st = stats_empty<Fmt>();
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t j = ((int64_t)r * team + rank) * N;
      load_unit(x[r], in + base + j, size - j, vec);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) stats_unit(st, x[r], size - ((int64_t)r * team + rank) * N);
    team_reduce<Fmt, Sym>(st, team, partial);
    const FakeParams<C> p = fake_params(st, bits, Sym);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t j = ((int64_t)r * team + rank) * N;
      if (j < size) {
        fake_unit<Fmt, Sym, Stoch>(x[r], p, seed, offset + (uint64_t)(base + j));
        store_unit(x[r], out + base + j, size - j, vec);
      }
    }
  }
}

// ------------------------------------------------------------------------------ few large groups
// keys[3g .. 3g+2] = absmax, max, min order keys of group g.
template <class Fmt>
__global__ void __launch_bounds__(DSQ_MAX_THREADS) stats_clear(typename Fmt::key* keys, int64_t groups) {
  const Stats<Fmt> e = stats_empty<Fmt>();
  for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += (int64_t)gridDim.x * blockDim.x) {
    keys[3 * g] = e.absmax_key;
    keys[3 * g + 1] = e.max_key;
    keys[3 * g + 2] = e.min_key;
  }
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

template <class Fmt, bool Sym, bool Stoch, int R>
__global__ void __launch_bounds__(DSQ_MAX_THREADS)
fake_chunks(const typename Fmt::storage* in, typename Fmt::storage* out, const typename Fmt::key* keys, int64_t S,
            int64_t groups, int64_t chunk, int bits, uint64_t seed, uint64_t offset) {
  typedef typename Fmt::compute C;
  constexpr int N = Unit<Fmt>::N;
  const int64_t items = groups * ((S + chunk - 1) / chunk);
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const Chunk c = chunk_of<Fmt>(item, S, chunk, in, out);
    Stats<Fmt> st;
    st.absmax_key = keys[3 * c.g];
    st.max_key = keys[3 * c.g + 1];
    st.min_key = keys[3 * c.g + 2];
    const FakeParams<C> p = fake_params(st, bits, Sym);
    const int64_t body = c.begin + c.head;
    for (int64_t u0 = threadIdx.x; u0 < c.units; u0 += (int64_t)blockDim.x * R) {
      Unit<Fmt> x[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t u = u0 + (int64_t)r * blockDim.x;
        load_unit(x[r], in + body + u * N, u < c.units ? N : 0, true);
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t u = u0 + (int64_t)r * blockDim.x;
        if (u < c.units) {
          fake_unit<Fmt, Sym, Stoch>(x[r], p, seed, offset + (uint64_t)(body + u * N));
          store_unit(x[r], out + body + u * N, N, true);
        }
      }
    }
    for (int64_t i = threadIdx.x; i < c.head; i += blockDim.x)
      fake_scalar<Fmt, Sym, Stoch>(in, out, c.begin + i, p, seed, offset);
    for (int64_t i = c.head + c.units * N + threadIdx.x; i < c.len; i += blockDim.x)
      fake_scalar<Fmt, Sym, Stoch>(in, out, c.begin + i, p, seed, offset);
  }
}

#undef DSQ_MAX_THREADS
#undef DSQ_DEV

}  // namespace dsq
