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
// * stats_clear + stats_chunks (dsq_blocks.cuh) + fake_chunks: groups too large for one block are
//   cut into chunks; each chunk's statistics are merged into per-group order keys with integer
//   atomics (exact and order-free), then a second pass quantizes every chunk with its group's
//   parameters.
//
// Threads move data in "units" of 16-byte vectors when a group (or chunk body) is 16-byte aligned
// in both source and destination, and element by element otherwise (ragged or misaligned edges).
// All indices are 64-bit; loops are grid-stride with trip counts uniform across a block, so no
// barrier or shuffle is ever skipped by a thread that has no work.
#include "dsq_blocks.cuh"
#include "dsq_philox.cuh"

namespace dsq {

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
// After stats_clear and stats_chunks (dsq_blocks.cuh) have left each group's order keys in `keys`.
template <class Fmt, bool Sym, bool Stoch, int R>
__global__ void __launch_bounds__(DSQ_MAX_THREADS)
fake_chunks(const typename Fmt::storage* in, typename Fmt::storage* out, const typename Fmt::key* keys, int64_t S,
            int64_t groups, int64_t chunk, int bits, uint64_t seed, uint64_t offset) {
  typedef typename Fmt::compute C;
  constexpr int N = Unit<Fmt>::N;
  const int64_t items = groups * ((S + chunk - 1) / chunk);
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const Chunk c = chunk_of<Fmt>(item, S, chunk, in, out);
    const FakeParams<C> p = fake_params(load_stats<Fmt>(keys, c.g), bits, Sym);
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

}  // namespace dsq
