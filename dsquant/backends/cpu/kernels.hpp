// CPU kernels: loops, threads and vector code around the scalar math of cuda/dsq_math.cuh.
// Nothing numeric is defined here; every formula comes from the shared headers, so these loops
// produce the same bits as the CUDA kernels.
// The per-range loops are compiled once per instruction-set tier (baseline x86-64, AVX2+FMA+F16C,
// AVX-512) and the best one that this CPU supports is chosen at run time (never -march=native:
// wheels must run anywhere).
#pragma once
#include <omp.h>
#if defined(__linux__)
#include <fcntl.h>
#include <time.h>
#include <unistd.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "dsq_math.cuh"
#include "dsq_philox.cuh"

namespace dsq_cpu {

using dsq::Stats;
using dsq::FakeParams;
using dsq::IntParams;

// Integer quantization: codes and params of n elements in `groups` groups.
struct IntQuantArgs {
  const void* in;
  uint8_t* q;        // ceil(n / per) bytes, per = codes per byte (dsq::int_codes_per_byte)
  float* params;     // [groups, symmetric ? 1 : 2]
  int64_t n, groups;
  int bits;
  bool symmetric;
  int threads;
};

// Integer dequantization: n values of the output dtype from codes and params.
struct IntDequantArgs {
  const uint8_t* q;
  const float* params;   // [groups, symmetric ? 1 : 2]
  void* out;
  int64_t n, groups;
  int bits;
  bool symmetric;
  int threads;
};

// Fake quantization of n elements in `groups` groups, in place when in == out.
struct FakeArgs {
  const void* in;
  void* out;
  int64_t n, groups;
  int bits;
  bool symmetric, stochastic;
  uint64_t seed, offset;
  int threads;
};

// A batch of integer quantization holds at most this many groups (their params stay on the stack).
const int64_t kIntBatchGroups = 512;

// ---------------------------------------------------------------- per-range loops, one set per ISA tier
// The kernels of one ISA for one element format: statistics of a range indexed [symmetric],
// fake quantization of a range and of a run of whole small groups indexed [symmetric][stochastic];
// integer quantization of a batch of groups indexed [codes per byte 1, 2, 4][symmetric], integer
// codes of a flat range indexed [codes per byte], integer dequantization of a flat range indexed
// [codes per byte][symmetric].
template <class Fmt> struct Ranges {
  typedef void (*FakeFn)(const typename Fmt::storage*, typename Fmt::storage*, int64_t,
                         const FakeParams<typename Fmt::compute>&, uint64_t, uint64_t);
  Stats<Fmt> (*stats[2])(const typename Fmt::storage*, int64_t);
  FakeFn fake[2][2];
  void (*fake_groups[2][2])(const FakeArgs&, int64_t, int64_t);
  void (*int_batch[3][2])(const IntQuantArgs&, int64_t, int64_t);
  void (*int_codes[3])(const IntQuantArgs&, int64_t, int64_t, const IntParams<typename Fmt::compute>*);
  void (*int_dequant[3][2])(const IntDequantArgs&, int64_t, int64_t);
};

#if defined(__x86_64__) && defined(__GNUC__)
#define DSQ_CPU_HAVE_X86_TIERS 1
#include <cpuid.h>
#endif

// ---------------------------------------------------------------- instruction-set tiers
// The per-range loops are compiled once per tier (isa.inc); each call uses the best tier this CPU
// and OS support, capped by isa_cap() (DSQUANT_CPU_ISA / DSQUANT_CPU_BASELINE at start, set_isa_cap
// later: the tests run every tier in one process). All tiers give the same bits.
enum Isa { ISA_BASELINE = 0, ISA_AVX2 = 1, ISA_AVX512 = 2, NUM_ISAS = 3 };
inline const char* isa_name(int isa) {
  static const char* const names[NUM_ISAS] = {"baseline", "avx2", "avx512"};
  return names[isa];
}
inline int isa_by_name(const char* name) {
  for (int i = 0; i < NUM_ISAS; ++i)
    if (std::strcmp(name, isa_name(i)) == 0) return i;
  return -1;
}

#ifdef DSQ_CPU_HAVE_X86_TIERS
// Whether the OS saves the register state of `mask` (XCR0 bits) on context switches: a CPU
// feature is only usable if so (cpuid says what the CPU has, XCR0 what the OS enabled).
inline bool os_saves(uint64_t mask) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE)) return false;
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return ((((uint64_t)hi << 32) | lo) & mask) == mask;
}
#endif

// The best tier this CPU and OS support.
inline int cpu_best_isa() {
#ifdef DSQ_CPU_HAVE_X86_TIERS
  static const int best = [] {
    const uint64_t ymm = 0x6, zmm = 0xe6;   // XCR0: SSE+AVX state; + opmask, ZMM0-15 high, ZMM16-31
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
          os_saves(ymm)))
      return (int)ISA_BASELINE;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && os_saves(zmm))
      return (int)ISA_AVX512;
    return (int)ISA_AVX2;
  }();
  return best;
#else
  return ISA_BASELINE;
#endif
}

// The highest tier calls may use: DSQUANT_CPU_ISA=baseline|avx2|avx512 or DSQUANT_CPU_BASELINE=1
// at start (an unknown name leaves no cap), set_isa_cap() later.
inline std::atomic<int>& isa_cap() {
  static std::atomic<int> cap{[] {
    if (std::getenv("DSQUANT_CPU_BASELINE") != nullptr) return (int)ISA_BASELINE;
    const char* name = std::getenv("DSQUANT_CPU_ISA");
    const int isa = name != nullptr ? isa_by_name(name) : -1;
    return isa >= 0 ? isa : (int)NUM_ISAS - 1;
  }()};
  return cap;
}
inline void set_isa_cap(int isa) { isa_cap().store(std::max(0, std::min(isa, (int)NUM_ISAS - 1))); }
inline int isa_in_use_index() { return std::min(cpu_best_isa(), isa_cap().load(std::memory_order_relaxed)); }

// One table per tier (each made by that tier's table-making function from a loop file compiled by
// isa.inc); get() returns the table of the tier in use. A tier this CPU lacks holds the table of
// the best tier below it (its own table-making function may not even run here).
template <class Table> struct PerIsa {
  Table t[NUM_ISAS];
  const Table& get() const { return t[isa_in_use_index()]; }
};
template <class Table>
PerIsa<Table> for_each_isa(Table (*base_table)(), Table (*avx2_table)(), Table (*avx512_table)()) {
  Table (*const make[NUM_ISAS])() = {base_table, avx2_table, avx512_table};
  PerIsa<Table> r;
  for (int i = 0; i < NUM_ISAS; ++i)
    r.t[i] = i <= cpu_best_isa() && make[i] != nullptr ? make[i]() : r.t[i - 1];
  return r;
}
// The three table-making functions of `fn`, a function defined in a loop file: for_each_isa(DSQ_CPU_TABLES(fn)).
#ifdef DSQ_CPU_HAVE_X86_TIERS
#define DSQ_CPU_TABLES(fn) &base::fn, &avx2::fn, &avx512::fn
#else
#define DSQ_CPU_TABLES(fn) &base::fn, nullptr, nullptr
#endif

#define DSQ_CPU_LOOPS "ranges.inc"
#include "isa.inc"

template <class Fmt> const Ranges<Fmt>& ranges_for_this_cpu() {
  static const PerIsa<Ranges<Fmt>> r = for_each_isa<Ranges<Fmt>>(DSQ_CPU_TABLES(ranges<Fmt>));
  return r.get();
}

const int64_t kLargeGroup = 1 << 15;
const int64_t kChunk = 1 << 15;

// ---------------------------------------------------------------- threads
// Work of fewer elements than this runs on the calling thread, without an OpenMP team: waking a
// team costs ~5-10 us on an idle machine (a time slice, milliseconds, when the other CPUs are
// busy), which single-threaded work below this size does not make up for (docs/threading.md).
const int64_t kSerialBelow = 1 << 16;

// When the machine's CPUs are taken by other work, a team thread is descheduled for a time slice
// (milliseconds) at a time and OpenMP's join waits for it, so a team only gets the CPUs that are
// free now (docs/threading.md has the measurements).
#if defined(__linux__)
// Tasks runnable on the machine now besides the caller: /proc/loadavg's fourth field
// ("running/total") counts them at the moment of reading (the load averages lag by minutes and
// count dsquant's own threads). Read at most once a millisecond; 0 where it cannot be read.
inline int others_running() {
  static std::atomic<int64_t> next_read_ns{0};
  static std::atomic<int> others{0};
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  const int64_t now = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
  if (now < next_read_ns.load(std::memory_order_relaxed)) return others.load(std::memory_order_relaxed);
  next_read_ns.store(now + 1000000, std::memory_order_relaxed);
  int running = 1;
  const int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    char text[128];
    const ssize_t got = read(fd, text, sizeof text - 1);
    close(fd);
    if (got > 0) {
      text[got] = 0;
      const char* p = text;
      for (int field = 0; field < 3 && p; ++field) {   // past the three load averages
        p = std::strchr(p, ' ');
        if (p) ++p;
      }
      if (p) running = std::atoi(p);
    }
  }
  others.store(std::max(0, running - 1), std::memory_order_relaxed);
  return others.load(std::memory_order_relaxed);
}
#else
inline int others_running() { return 0; }
#endif

// DSQUANT_CPU_LOAD_AWARE=0 (read once): teams whatever the load (tests of the team code paths).
inline bool load_aware() {
  static const bool on = [] {
    const char* v = std::getenv("DSQUANT_CPU_LOAD_AWARE");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return on;
}

// The team size for a call of `elements` elements asked to use `threads` threads: 1 (the calling
// thread alone) for small work, else the threads that fit on the CPUs no other task is running on
// (the caller's own CPU counted as free).
inline int team_size(int64_t elements, int threads) {
  if (threads <= 1 || elements < kSerialBelow) return 1;
  if (!load_aware()) return threads;
  static const int cpus = omp_get_num_procs();
  return std::max(1, std::min(threads, cpus - others_running()));
}

// Every parallel loop hands out its work items dynamically, one at a time (items are kChunk
// elements or so: a few microseconds each, so the hand-out costs nothing): a thread that the OS
// deschedules holds up at most the item it holds, and the others take the rest. A static split
// would make every thread wait for the descheduled one's whole share.

// Groups of kLargeGroup elements or more, cut into kChunk pieces: work item i is chunk c of
// group g (i = g * per_group + c).
struct LargeGroups {
  int64_t groups, S;
  int64_t per_group() const { return (S + kChunk - 1) / kChunk; }
  int64_t items() const { return groups * per_group(); }
  int64_t group(int64_t i) const { return i / per_group(); }
  int64_t begin(int64_t i) const { return group(i) * S + (i % per_group()) * kChunk; }
  int64_t length(int64_t i) const { return std::min(kChunk, S - (i % per_group()) * kChunk); }
};

// Call inside a parallel region: partial statistics of every chunk (stats_of(i) for work item i),
// and, by whichever thread finishes a group's last chunk, the group's merged statistics handed to
// on_group(g, stats) (the params of each op), so no second loop and no barrier before it. The
// merge order is fixed (chunk order), and max/min merges are exact: the same params either way.
// The loop's closing barrier stays: the next pass needs every group's params.
template <class St, class StatsOf, class OnGroup>
void large_group_stats(const LargeGroups& layout, std::vector<St>& partial, std::atomic<int64_t>* chunks_left,
                       StatsOf stats_of, OnGroup on_group) {
  const int64_t per_group = layout.per_group();
#pragma omp for schedule(dynamic, 1)
  for (int64_t i = 0; i < layout.items(); ++i) {
    partial[i] = stats_of(i);
    const int64_t g = layout.group(i);
    if (chunks_left[g].fetch_sub(1, std::memory_order_acq_rel) == 1) {   // sees every chunk's partial
      St st = partial[g * per_group];
      for (int64_t c = 1; c < per_group; ++c) dsq::stats_merge(st, partial[g * per_group + c]);
      on_group(g, st);
    }
  }
}

// The per-group count of chunks large_group_stats counts down.
struct ChunkCounters {
  std::unique_ptr<std::atomic<int64_t>[]> left;
  explicit ChunkCounters(const LargeGroups& layout) : left(new std::atomic<int64_t>[layout.groups]) {
    for (int64_t g = 0; g < layout.groups; ++g) left[g].store(layout.per_group(), std::memory_order_relaxed);
  }
};

// Groups below kLargeGroup are whole (statistics and quantization in one visit, the group stays in
// cache), kChunk elements' worth of them a work item; larger groups are cut into kChunk pieces
// processed in two parallel passes (partial statistics, then quantization), so a single huge
// group uses every thread.
template <class Fmt>
void fake_quantize_typed(const FakeArgs& a) {
  typedef typename Fmt::storage T;
  typedef typename Fmt::compute C;
  const Ranges<Fmt>& k = ranges_for_this_cpu<Fmt>();
  const auto stats = k.stats[a.symmetric];
  const auto fake = k.fake[a.symmetric][a.stochastic];
  const T* in = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  const int64_t S = a.n / a.groups;
  if (S < kLargeGroup) {
    const auto groups = k.fake_groups[a.symmetric][a.stochastic];
    const int64_t per_item = std::max<int64_t>(1, kChunk / std::max<int64_t>(1, S));   // groups per work item
    const int64_t items = (a.groups + per_item - 1) / per_item;
    const int team = team_size(a.n, a.threads);
    if (team == 1) {                  // small work: no OpenMP region at all (a per-call cost)
      groups(a, 0, a.groups);
      return;
    }
#pragma omp parallel for schedule(dynamic, 1) num_threads(team)
    for (int64_t it = 0; it < items; ++it) groups(a, it * per_item, std::min(a.groups, (it + 1) * per_item));
    return;
  }
  const LargeGroups layout{a.groups, S};
  std::vector<Stats<Fmt>> partial(layout.items());
  std::vector<FakeParams<C>> params(a.groups);
  const ChunkCounters counters(layout);
#pragma omp parallel num_threads(team_size(a.n, a.threads))
  {
    large_group_stats(
        layout, partial, counters.left.get(), [&](int64_t i) { return stats(in + layout.begin(i), layout.length(i)); },
        [&](int64_t g, const Stats<Fmt>& st) { params[g] = dsq::fake_params(st, a.bits, a.symmetric); });
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t i = 0; i < layout.items(); ++i)
      fake(in + layout.begin(i), out + layout.begin(i), layout.length(i), params[layout.group(i)], a.seed,
           a.offset + (uint64_t)layout.begin(i));
  }
}

// Dispatch table by dsq::DType.
typedef void (*FakeFn)(const FakeArgs&);
#define DSQ_FAKE_ENTRY(code, Fmt) &fake_quantize_typed<dsq::Fmt>,
static const FakeFn kFakeTable[dsq::NUM_DTYPES] = {DSQ_FOR_EACH_DTYPE(DSQ_FAKE_ENTRY)};
#undef DSQ_FAKE_ENTRY

inline void fake_quantize(int dtype, const FakeArgs& a) {
  if (a.n == 0) return;
  kFakeTable[dtype](a);
}

// ---------------------------------------------------------------- integer quantization
// Which ranges[...] index serves a bit width: codes per byte 1, 2 or 4.
inline int per_index(int bits) {
  const int per = dsq::int_codes_per_byte(bits);
  return per == 1 ? 0 : (per == 2 ? 1 : 2);
}

inline int64_t gcd64(int64_t a, int64_t b) { while (b) { int64_t t = a % b; a = b; b = t; } return a; }

template <class Fmt>
void int_quantize_typed(const IntQuantArgs& a) {
  typedef typename Fmt::storage T;
  typedef typename Fmt::compute C;
  const Ranges<Fmt>& k = ranges_for_this_cpu<Fmt>();
  const int per = dsq::int_codes_per_byte(a.bits), pi = per_index(a.bits);
  const T* in = static_cast<const T*>(a.in);
  const int64_t S = a.n / a.groups;
  if (S < kLargeGroup) {
    // Work items are batches of whole runs of groups, a run being the shortest one that also
    // fills whole bytes (per / gcd(S, per) groups), so no two threads write the same byte.
    const auto batch_fn = k.int_batch[pi][a.symmetric];
    const int64_t run = per / gcd64(S, per);
    const int64_t runs = std::min(kChunk / std::max<int64_t>(1, run * S), kIntBatchGroups / run);
    const int64_t batch = run * std::max<int64_t>(1, runs);
    const int64_t batches = (a.groups + batch - 1) / batch;
#pragma omp parallel for schedule(dynamic, 1) num_threads(team_size(a.n, a.threads))
    for (int64_t b = 0; b < batches; ++b) batch_fn(a, b * batch, std::min(a.groups, (b + 1) * batch));
    return;
  }
  // Large groups: partial statistics per chunk, params per group, then codes per chunk of the
  // flat input (kChunk is a multiple of every per, so chunks start on byte boundaries).
  const auto stats = k.stats[a.symmetric];
  const auto codes = k.int_codes[pi];
  const LargeGroups layout{a.groups, S};
  const int64_t flat_chunks = (a.n + kChunk - 1) / kChunk;
  std::vector<Stats<Fmt>> partial(layout.items());
  std::vector<IntParams<C>> params(a.groups);
  const ChunkCounters counters(layout);
#pragma omp parallel num_threads(team_size(a.n, a.threads))
  {
    large_group_stats(
        layout, partial, counters.left.get(), [&](int64_t i) { return stats(in + layout.begin(i), layout.length(i)); },
        [&](int64_t g, const Stats<Fmt>& st) {
          params[g] = dsq::int_params(st, a.bits, a.symmetric);
          dsq::store_int_params(a.params, g, params[g], a.symmetric);
        });
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t c = 0; c < flat_chunks; ++c) codes(a, c * kChunk, std::min(a.n, (c + 1) * kChunk), params.data());
  }
}

template <class Fmt>
void int_dequantize_typed(const IntDequantArgs& a) {
  const auto range = ranges_for_this_cpu<Fmt>().int_dequant[per_index(a.bits)][a.symmetric];
  const int64_t chunks = (a.n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(dynamic, 1) num_threads(team_size(a.n, a.threads))
  for (int64_t c = 0; c < chunks; ++c) range(a, c * kChunk, std::min(a.n, (c + 1) * kChunk));
}

// Dispatch tables by dsq::DType.
typedef void (*IntQuantFn)(const IntQuantArgs&);
#define DSQ_INT_QUANT_ENTRY(code, Fmt) &int_quantize_typed<dsq::Fmt>,
static const IntQuantFn kIntQuantTable[dsq::NUM_DTYPES] = {DSQ_FOR_EACH_DTYPE(DSQ_INT_QUANT_ENTRY)};
#undef DSQ_INT_QUANT_ENTRY
typedef void (*IntDequantFn)(const IntDequantArgs&);
#define DSQ_INT_DEQUANT_ENTRY(code, Fmt) &int_dequantize_typed<dsq::Fmt>,
static const IntDequantFn kIntDequantTable[dsq::NUM_DTYPES] = {DSQ_FOR_EACH_DTYPE(DSQ_INT_DEQUANT_ENTRY)};
#undef DSQ_INT_DEQUANT_ENTRY

inline void int_quantize(int dtype, const IntQuantArgs& a) { kIntQuantTable[dtype](a); }

inline void int_dequantize(int dtype, const IntDequantArgs& a) {
  if (a.n == 0) return;
  kIntDequantTable[dtype](a);
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
#pragma omp parallel for schedule(dynamic, 1) num_threads(team_size(n, a.threads))
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
  const int64_t rows_per_item = std::max<int64_t>(1, kChunk / inner);
#pragma omp parallel for schedule(dynamic, rows_per_item) num_threads(team_size(outer * inner, threads))
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

}  // namespace dsq_cpu
