// dsq_int.cu — integer quantization on the GPU: dsquant.quantize, dsquant.dequantize, and DeepSpeed's
// experimental unsigned int4/int8 -> float16 dequantization.
//
// Every formula (params, codes, packing, dequantized values) comes from dsq_math.cuh, the header
// the CPU path compiles too, so GPU and CPU bytes are identical. This file only decides which
// thread touches which element and which byte. Launch plans: dsquant/_launch.py.
//
// Quantization, codes packed Per = 1, 2 or 4 to a byte (first element in the high bits):
// * int_quant_resident: a team of threads holds a whole group in registers (as fake_resident),
//   reduces its statistics, then writes the group's params and code bytes.
// * stats_clear + stats_chunks (dsq_blocks.cuh) + int_quant_chunks: groups too large for one
//   block: per-group statistics keys from every chunk, then the codes of every chunk.
// * int_quant_seams: when S is not a multiple of Per, a byte may hold codes of two or more groups
//   (a seam). The passes above write only bytes that lie within one group; this last pass writes
//   each seam whole, from the statistics keys of its groups that the passes above leave behind.
//   So every byte is written once, by one thread: no races, no read-modify-write.
//
// Dequantization (dequant_codes) is elementwise, with a decoder holding one group's parameters:
// a team of threads per group, or a block per chunk of a large group.
//
// Vector access: a unit of N elements (16 bytes of input or output) whose first flat index is a
// multiple of N, together with its N / Per code bytes, moves in one access each when the arrays
// are aligned; the elements of a group (or chunk) before its first and after its last whole unit
// (its "edges") are handled one by one. All indices are 64-bit, loops are grid-stride, and the
// only kernel with barriers (int_quant_resident) runs a loop whose trip count is uniform across
// the block.
#include "dsq_blocks.cuh"

namespace dsq {

template <int B> DSQ_DEV bool aligned_to(const void* p) { return ((unsigned long long)p & (B - 1ull)) == 0; }

// The unsigned integer of B = 1, 2, 4 or 8 bytes: B code bytes move in one access (p aligned to
// B), as a little-endian integer (byte 0 in the low bits).
template <int B> struct Bytes;
template <> struct Bytes<1> { typedef uint8_t T; };
template <> struct Bytes<2> { typedef uint16_t T; };
template <> struct Bytes<4> { typedef uint32_t T; };
template <> struct Bytes<8> { typedef uint64_t T; };

template <int B> DSQ_DEV uint64_t load_bytes(const uint8_t* p) {
  return *reinterpret_cast<const typename Bytes<B>::T*>(p);
}

template <int B> DSQ_DEV void store_bytes(uint8_t* p, uint64_t v) {
  *reinterpret_cast<typename Bytes<B>::T*>(p) = (typename Bytes<B>::T)v;
}

// The elements [begin, end) of a group or chunk, cut for vector access: `units` whole units from
// `body` (a multiple of N), and the edges before and after them. Without vector access every
// element is an edge.
template <int N> struct Span {
  int64_t begin, end, body, units;
  DSQ_DEV Span(int64_t b, int64_t e, bool vec) : begin(b), end(e) {
    const int64_t first = (b + N - 1) / N * N;
    units = vec && first < e ? (e - first) / N : 0;
    body = units ? first : e;
  }
  DSQ_DEV int64_t unit(int64_t u) const { return body + u * N; }   // flat index of unit u
  DSQ_DEV int64_t tail() const { return body + units * N; }        // first edge after the units
  DSQ_DEV int64_t edges() const { return end - begin - units * N; }
  DSQ_DEV int64_t edge(int64_t i) const { return i < body - begin ? begin + i : tail() + (i - (body - begin)); }
};

// ------------------------------------------------------------------------------ quantization
// The N / Per code bytes of a unit's elements, as the little-endian integer that stores them.
template <class Fmt, int Per>
DSQ_DEV uint64_t unit_codes(const Unit<Fmt>& x, const IntParams<typename Fmt::compute>& p) {
  uint64_t bytes = 0;
#pragma unroll
  for (int b = 0; b < Unit<Fmt>::N / Per; ++b) {
    uint32_t byte = 0;
#pragma unroll
    for (int j = 0; j < Per; ++j) byte |= code_to_field(int_code<Fmt>(x.v[b * Per + j], p), Per, j);
    bytes |= (uint64_t)byte << (8 * b);
  }
  return bytes;
}

// Writes the code bytes whose first element lies in [lo, hi) and whose last lies before `stop`,
// the end of their group (a byte reaching into the next group is a seam, see int_quant_seams).
// Codes come from `in` again: the caller has just read these elements, so they are cache hits.
// Thread `rank` of `team` threads takes every team-th byte.
template <class Fmt, int Per>
DSQ_DEV void edge_bytes(const typename Fmt::storage* in, uint8_t* q, int64_t lo, int64_t hi, int64_t stop,
                        const IntParams<typename Fmt::compute>& p, int rank, int team) {
  const int64_t first = (lo + Per - 1) / Per, past = (hi + Per - 1) / Per, whole = stop / Per;
  for (int64_t b = first + rank; b < (past < whole ? past : whole); b += team) {
    uint32_t byte = 0;
#pragma unroll
    for (int j = 0; j < Per; ++j) byte |= code_to_field(int_code<Fmt>(in[b * Per + j], p), Per, j);
    q[b] = (uint8_t)byte;
  }
}

// Many small groups: as fake_resident (dsq_fake.cu), team g holds group g, thread `rank` its units
// rank, rank + team, ..., rank + (R-1)·team. Launch: team·R·N >= S, and either team <= 32 and
// blockDim.x a multiple of 32, or blockDim.x == team. keys (null when S is a multiple of Per)
// receives each group's statistics for int_quant_seams.
template <class Fmt, bool Sym, int Per, int R>
__global__ void __launch_bounds__(DSQ_MAX_THREADS)
int_quant_resident(const typename Fmt::storage* in, uint8_t* q, float* params, typename Fmt::key* keys, int64_t S,
                   int64_t groups, int team, int bits) {
  typedef typename Fmt::compute C;
  constexpr int N = Unit<Fmt>::N;
  __shared__ Stats<Fmt> partial[32];
  const int rank = (int)threadIdx.x & (team - 1);
  const int64_t teams = (int64_t)(blockDim.x / team);
  const int64_t mine = (int64_t)(threadIdx.x / team);
  const bool vec = aligned16(in) && aligned_to<N / Per>(q);
  for (int64_t first = (int64_t)blockIdx.x * teams; first < groups; first += (int64_t)gridDim.x * teams) {
    const int64_t g = first + mine;
    const bool live = g < groups;
    const Span<N> s(live ? g * S : 0, live ? g * S + S : 0, vec);
    Unit<Fmt> x[R];
    Stats<Fmt> st = stats_empty<Fmt>();
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t u = (int64_t)r * team + rank;
      load_unit(x[r], in + s.unit(u), u < s.units ? N : 0, true);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) stats_unit(st, x[r], (int64_t)r * team + rank < s.units ? N : 0);
    for (int64_t i = rank; i < s.edges(); i += team) stats_add(st, in[s.edge(i)]);
    team_reduce<Fmt, Sym>(st, team, partial);
    const IntParams<C> p = int_params(st, bits, Sym);
    if (live && rank == 0) {
      store_int_params(params, g, p, Sym);
      if (keys) store_stats(keys, g, st);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t u = (int64_t)r * team + rank;
      if (u < s.units) store_bytes<N / Per>(q + s.unit(u) / Per, unit_codes<Fmt, Per>(x[r], p));
    }
    edge_bytes<Fmt, Per>(in, q, s.begin, s.body, s.end, p, rank, team);
    edge_bytes<Fmt, Per>(in, q, s.tail(), s.end, s.end, p, rank, team);
  }
}

// Few large groups, after stats_clear and stats_chunks have left each group's keys: the params
// (written by the group's first chunk) and the codes of every chunk.
template <class Fmt, bool Sym, int Per, int R>
__global__ void __launch_bounds__(DSQ_MAX_THREADS)
int_quant_chunks(const typename Fmt::storage* in, uint8_t* q, float* params, const typename Fmt::key* keys, int64_t S,
                 int64_t groups, int64_t chunk, int bits) {
  typedef typename Fmt::compute C;
  constexpr int N = Unit<Fmt>::N;
  const int64_t per_group = (S + chunk - 1) / chunk;
  const int64_t items = groups * per_group;
  const bool vec = aligned16(in) && aligned_to<N / Per>(q);
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t g = item / per_group, k = item - g * per_group;
    const int64_t begin = g * S + k * chunk, stop = g * S + S;
    const Span<N> s(begin, begin + chunk < stop ? begin + chunk : stop, vec);
    const IntParams<C> p = int_params(load_stats<Fmt>(keys, g), bits, Sym);
    if (k == 0 && threadIdx.x == 0) store_int_params(params, g, p, Sym);
    for (int64_t u0 = threadIdx.x; u0 < s.units; u0 += (int64_t)blockDim.x * R) {
      Unit<Fmt> x[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t u = u0 + (int64_t)r * blockDim.x;
        load_unit(x[r], in + s.unit(u), u < s.units ? N : 0, true);
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t u = u0 + (int64_t)r * blockDim.x;
        if (u < s.units) store_bytes<N / Per>(q + s.unit(u) / Per, unit_codes<Fmt, Per>(x[r], p));
      }
    }
    edge_bytes<Fmt, Per>(in, q, s.begin, s.body, stop, p, (int)threadIdx.x, (int)blockDim.x);
    edge_bytes<Fmt, Per>(in, q, s.tail(), s.end, stop, p, (int)threadIdx.x, (int)blockDim.x);
  }
}

// The seams: thread g looks at the boundary between groups g - 1 and g. When it falls inside a
// byte and is the first boundary in that byte, the thread writes the byte, each element coded
// with its own group's params (recomputed from the keys: the stored float32 params cannot give
// back the scale and offset exactly).
template <class Fmt, bool Sym>
__global__ void __launch_bounds__(DSQ_MAX_THREADS)
int_quant_seams(const typename Fmt::storage* in, uint8_t* q, const typename Fmt::key* keys, int64_t S, int64_t groups,
                int per, int bits) {
  typedef typename Fmt::compute C;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t g = 1 + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
    const int64_t b = g * S / per;
    if (g * S % per == 0 || (g - 1) * S > b * per) continue;
    int64_t h = g - 1;   // the group of the byte's first element
    IntParams<C> p = int_params(load_stats<Fmt>(keys, h), bits, Sym);
    uint32_t byte = 0;
    for (int j = 0; j < per; ++j) {
      const int64_t e = b * per + j;
      if (e == (h + 1) * S) p = int_params(load_stats<Fmt>(keys, ++h), bits, Sym);
      byte |= code_to_field(int_code<Fmt>(in[e], p), per, j);
    }
    q[b] = (uint8_t)byte;
  }
}

// ------------------------------------------------------------------------------ dequantization
// A decoder holds the parameters of group g (read from pa and pb) and gives the output element of
// field j of a code byte.

// dsquant.quantize's signed codes, float32 params [groups, 1] or [groups, 2] at pa (pb unused).
template <class Fmt, bool Sym> struct SignedCodes {
  typedef Fmt Out;
  typedef float Param;
  float p0, p1;
  DSQ_DEV SignedCodes(const float* pa, const float*, int64_t g)
      : p0(pa[Sym ? g : 2 * g]), p1(Sym ? 0.0f : pa[2 * g + 1]) {}
  DSQ_DEV typename Fmt::storage operator()(uint32_t byte, int per, int j) const {
    return int_dequant_element<Fmt>(field_signed(byte, per, j), p0, p1, Sym);
  }
};

// DeepSpeed's experimental unsigned codes, float16 scale (pa) and minimum (pb) per group.
struct UnsignedHalf {
  typedef F16 Out;
  typedef uint16_t Param;
  uint16_t scale, minimum;
  DSQ_DEV UnsignedHalf(const uint16_t* pa, const uint16_t* pb, int64_t g) : scale(pa[g]), minimum(pb[g]) {}
  DSQ_DEV uint16_t operator()(uint32_t byte, int per, int j) const {
    return uint_dequant_half(field_unsigned(byte, per, j), scale, minimum);
  }
};

// Work item i is chunk i % per_group of group i / per_group (chunk >= S: one item per group), held
// by a team of `team` threads (a power of two; blockDim.x a multiple of team), R units per thread
// and step. The explicit minimum of one block per SM lets ptxas go past 64 registers: otherwise, with
// each unit's 16 bytes stored at once, it spills 4 bytes in the int8 UnsignedHalf instantiation (sm_90).
template <class Dec, int Per, int R>
__global__ void __launch_bounds__(DSQ_MAX_THREADS, 1)
dequant_codes(const uint8_t* q, const typename Dec::Param* pa, const typename Dec::Param* pb,
              typename Dec::Out::storage* out, int64_t S, int64_t groups, int64_t chunk, int team) {
  typedef typename Dec::Out Fmt;
  constexpr int N = Unit<Fmt>::N;
  const int rank = (int)threadIdx.x & (team - 1);
  const int64_t teams = (int64_t)(blockDim.x / team);
  const int64_t per_group = (S + chunk - 1) / chunk;
  const int64_t items = groups * per_group;
  const bool vec = aligned16(out) && aligned_to<N / Per>(q);
  for (int64_t i = (int64_t)blockIdx.x * teams + threadIdx.x / team; i < items; i += (int64_t)gridDim.x * teams) {
    const int64_t g = per_group == 1 ? i : i / per_group;   // small groups: no 64-bit division
    const int64_t begin = g * S + (i - g * per_group) * chunk, stop = g * S + S;
    const Span<N> s(begin, begin + chunk < stop ? begin + chunk : stop, vec);
    const Dec dec(pa, pb, g);
    for (int64_t u0 = rank; u0 < s.units; u0 += (int64_t)team * R) {
      uint64_t bytes[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t u = u0 + (int64_t)r * team;
        bytes[r] = u < s.units ? load_bytes<N / Per>(q + s.unit(u) / Per) : 0;
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t u = u0 + (int64_t)r * team;
        if (u < s.units) {
          Unit<Fmt> y;
#pragma unroll
          for (int k = 0; k < N; ++k) y.v[k] = dec((uint32_t)(bytes[r] >> (8 * (k / Per))) & 0xffu, Per, k % Per);
          store_unit(y, out + s.unit(u), N, true);
        }
      }
    }
    for (int64_t j = rank; j < s.edges(); j += team) {
      const int64_t e = s.edge(j);
      out[e] = dec(q[e / Per], Per, (int)(e % Per));
    }
  }
}

}  // namespace dsq
