// Memory of dsquant's host result buffers.
//
// Small buffers (< kBigBytes) come from posix_memalign: glibc serves them from its heap without
// page faults. A large buffer costs a page fault per 4 KiB page on every fresh mapping (glibc maps
// and unmaps large blocks on each malloc/free), which made a call that allocates its result run at
// 0.3-0.6x of the same call with out=. So large buffers are mapped here directly, in size classes,
// and a freed one is kept in a small bounded cache for the next result of its class: reused pages
// are already resident. The cache holds at most `limit` bytes (DSQUANT_BUFFER_CACHE_MB, default
// 256 MiB; 0 disables it) in at most kSlots buffers; anything beyond is unmapped at once, oldest
// first, so memory goes back to the system. A buffer enters the cache only when its last owner
// frees it (the DLPack deleter or the HostBuffer's destructor), so it is never handed out twice.
// Fresh mappings ask for transparent huge pages (madvise): 512x fewer faults where the kernel
// grants them. Thread safe: deleters run on any thread, with or without the GIL.
#pragma once
#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>

namespace dsq_buffers {

const size_t kBigBytes = size_t(1) << 20;
const int kSlots = 16;

// Bytes actually reserved for a request of n: large sizes round up to 1/8 of their power of two
// (at most 12.5% more), so repeated results of nearly the same size share a class.
inline size_t capacity_for(size_t n) {
  if (n < kBigBytes) return n ? n : 64;   // at least one line, so empty results have an address
  size_t p = kBigBytes;
  while (p <= n / 2) p *= 2;
  const size_t step = p / 8;
  return (n + step - 1) / step * step;
}

struct Slot {
  void* data;
  size_t capacity;
  uint64_t age;
};

struct Cache {
  std::mutex lock;
  size_t limit = size_t(256) << 20;
  size_t held = 0;        // bytes in slots
  int count = 0;
  uint64_t clock = 0;
  uint64_t hits = 0, misses = 0;
  Slot slots[kSlots];
};

inline Cache& cache() {
  static Cache* c = new Cache();          // never destroyed: deleters may run at interpreter exit
  return *c;
}

inline void unmap(void* p, size_t capacity) { munmap(p, capacity); }

// 64-byte-aligned memory for `n` bytes; *capacity receives what must be passed to release().
inline void* allocate(size_t n, size_t* capacity) {
  const size_t cap = capacity_for(n);
  *capacity = cap;
  if (cap < kBigBytes) {
    void* p = nullptr;
    return posix_memalign(&p, 64, cap) == 0 ? p : nullptr;
  }
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> g(c.lock);
    for (int i = 0; i < c.count; ++i) {
      if (c.slots[i].capacity == cap) {
        void* p = c.slots[i].data;
        c.slots[i] = c.slots[--c.count];
        c.held -= cap;
        ++c.hits;
        return p;
      }
    }
    ++c.misses;
  }
  void* p = mmap(nullptr, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
#ifdef MADV_HUGEPAGE
  madvise(p, cap, MADV_HUGEPAGE);         // advice only: ignored where THP is off
#endif
  return p;
}

// Give back memory from allocate(): into the cache, or to the system.
inline void release(void* p, size_t capacity) {
  if (p == nullptr) return;
  if (capacity < kBigBytes) {
    free(p);
    return;
  }
  Slot evicted[kSlots + 1];
  int n_evicted = 0;
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> g(c.lock);
    if (capacity > c.limit) {
      evicted[n_evicted++] = Slot{p, capacity, 0};
    } else {
      while (c.count > 0 && (c.held + capacity > c.limit || c.count == kSlots)) {
        int oldest = 0;
        for (int i = 1; i < c.count; ++i)
          if (c.slots[i].age < c.slots[oldest].age) oldest = i;
        evicted[n_evicted++] = c.slots[oldest];
        c.held -= c.slots[oldest].capacity;
        c.slots[oldest] = c.slots[--c.count];
      }
      c.slots[c.count++] = Slot{p, capacity, ++c.clock};
      c.held += capacity;
    }
  }
  for (int i = 0; i < n_evicted; ++i) unmap(evicted[i].data, evicted[i].capacity);
}

// Unmap every cached buffer and set the limit (bytes); returns the bytes released.
inline size_t set_limit(size_t limit) {
  Slot evicted[kSlots];
  int n_evicted = 0;
  size_t freed = 0;
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> g(c.lock);
    c.limit = limit;
    for (int i = 0; i < c.count; ++i) evicted[n_evicted++] = c.slots[i];
    freed = c.held;
    c.count = 0;
    c.held = 0;
  }
  for (int i = 0; i < n_evicted; ++i) unmap(evicted[i].data, evicted[i].capacity);
  return freed;
}

struct Info {
  size_t limit, held;
  int count;
  uint64_t hits, misses;
};

inline Info info() {
  Cache& c = cache();
  std::lock_guard<std::mutex> g(c.lock);
  return Info{c.limit, c.held, c.count, c.hits, c.misses};
}

// In a forked child: a lock held by a thread of the parent at fork() would stay held forever.
// The cached buffers are the child's own copy-on-write memory and stay valid.
inline void after_fork_in_child() { new (&cache().lock) std::mutex(); }

}  // namespace dsq_buffers
