// cuda_emu.hpp — runs the kernels of cuda/*.cu on the CPU, for tests on machines without a GPU.
//
// Blocks run one after another; the threads of a block are fibers (ucontext) switched only at
// __syncthreads and __shfl_xor_sync, which are real barriers here (a block barrier, a barrier of
// the 32 lanes of a warp). So the emulation checks what a GPU run would: indexing, work split,
// reductions, random-stream positions, and that no thread skips a barrier or a shuffle its
// partners wait in (that deadlocks here and is reported as an error). The scalar math is the
// host branch of cuda/dsq_math.cuh, the same functions the CPU path runs.
//
// Which runnable thread goes next follows a policy that changes from launch to launch: round
// robin, or always the lowest (highest) numbered runnable thread, which lets the first (last)
// warp run ahead of the others up to the next block barrier. A missing barrier between a write
// to shared memory and other warps' reads of the old value then shows as a wrong result.
#pragma once
#include <ucontext.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

struct uint4 {
  unsigned x, y, z, w;
};

namespace emu {

struct Dim {
  unsigned x, y, z;
};

struct Barrier {
  unsigned arrived = 0, generation = 0;
};

struct Fiber {
  ucontext_t ctx;
  Dim tid;
  bool done;
  const Barrier* waiting;   // the barrier it waits at, or null
  unsigned wait_generation;
  bool runnable() const { return !done && (!waiting || waiting->generation != wait_generation); }
};

inline Dim block_idx, block_dim, grid_dim;
inline std::vector<Fiber> fibers;
inline std::vector<std::vector<char>> stacks;
inline std::vector<Barrier> warp_bars;
inline Barrier block_bar;
inline std::vector<unsigned long long> lanes;    // shuffle exchange slots, one per thread
inline ucontext_t scheduler;
inline int current = 0;
inline void (*body)() = nullptr;
inline std::string error;
inline unsigned launches = 0;   // picks the scheduling policy of each launch

inline void yield() { swapcontext(&fibers[current].ctx, &scheduler); }

inline void wait_at(Barrier& b, unsigned count) {
  if (++b.arrived == count) {
    b.arrived = 0;
    ++b.generation;
    return;
  }
  fibers[current].waiting = &b;
  fibers[current].wait_generation = b.generation;
  yield();   // the scheduler resumes this fiber once the barrier has opened
  fibers[current].waiting = nullptr;
}

// The next fiber to run under `policy` (0 round robin after `last`, 1 lowest, 2 highest), or -1.
inline int next_fiber(int policy, int last) {
  const int n = (int)fibers.size();
  for (int i = 0; i < n; ++i) {
    const int t = policy == 0 ? (last + 1 + i) % n : policy == 1 ? i : n - 1 - i;
    if (fibers[t].runnable()) return t;
  }
  return -1;
}

inline void fiber_main() {
  body();
  fibers[current].done = true;
  // returning resumes uc_link (the scheduler)
}

// Runs body() for every thread of every block; returns 0, or -1 with `error` set.
inline int run(unsigned grid, unsigned block) {
  if (block == 0 || block % 32 != 0 || block > 1024) {
    error = "block size " + std::to_string(block) + " is not a positive multiple of 32 up to 1024";
    return -1;
  }
  grid_dim = {grid, 1, 1};
  block_dim = {block, 1, 1};
  const int policy = (int)(launches++ % 3);
  const size_t stack_bytes = 256 * 1024;
  stacks.resize(block);
  for (auto& s : stacks) s.resize(stack_bytes);
  for (unsigned b = 0; b < grid; ++b) {
    block_idx = {b, 0, 0};
    fibers.assign(block, Fiber{});
    warp_bars.assign(block / 32, Barrier{});
    block_bar = Barrier{};
    lanes.assign(block, 0);
    for (unsigned t = 0; t < block; ++t) {
      Fiber& f = fibers[t];
      f.tid = {t, 0, 0};
      f.done = false;
      f.waiting = nullptr;
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = stacks[t].data();
      f.ctx.uc_stack.ss_size = stack_bytes;
      f.ctx.uc_link = &scheduler;
      makecontext(&f.ctx, fiber_main, 0);
    }
    for (int t = -1;;) {
      t = next_fiber(policy, t);
      if (t < 0) {
        for (const Fiber& f : fibers) {
          if (!f.done) {
            error = "block " + std::to_string(b) + ": threads wait at a barrier or shuffle that others never reach";
            return -1;
          }
        }
        break;
      }
      current = t;
      swapcontext(&scheduler, &fibers[t].ctx);
    }
  }
  return 0;
}

template <class... A, size_t... I>
void call(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
  kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

// Launch with cuLaunchKernel-style arguments: args[i] points to the value of parameter i.
template <class... A> int launch(void (*kernel)(A...), unsigned grid, unsigned block, void** args) {
  static void (*k)(A...);
  static void** a;
  k = kernel;
  a = args;
  body = [] { call(k, a, std::index_sequence_for<A...>{}); };
  return run(grid, block);
}

}  // namespace emu

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define threadIdx (emu::fibers[emu::current].tid)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

inline void __syncthreads() { emu::wait_at(emu::block_bar, emu::block_dim.x); }

template <class T> T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
  if (mask != 0xffffffffu) emu::error = "partial shuffle masks are not emulated";
  const unsigned t = threadIdx.x, warp = t / 32, lane = t % 32;
  unsigned long long slot = 0;
  std::memcpy(&slot, &value, sizeof(T));
  emu::lanes[t] = slot;
  emu::wait_at(emu::warp_bars[warp], 32);      // every lane has published its value
  T out;
  slot = emu::lanes[warp * 32 + (lane ^ (unsigned)lane_mask)];
  std::memcpy(&out, &slot, sizeof(T));
  emu::wait_at(emu::warp_bars[warp], 32);      // every lane has read before the next shuffle
  return out;
}

template <class T> T atomicMax(T* p, T v) {
  T old = *p;
  if (v > old) *p = v;
  return old;
}
template <class T> T atomicMin(T* p, T v) {
  T old = *p;
  if (v < old) *p = v;
  return old;
}
