// regroup.hpp — the copy between an array's layout and group order (dsquant/core/grouping.py) for
// strided groupings (per-channel along a later axis, 2-d tiles). Such a copy is a transpose of
// some axes: its source's fastest axis is not its destination's. Walking either side's fastest
// axis alone touches one cache line (and, for rows over 4 KiB, one page) per element on the other
// side; this copy goes through square tiles of those two axes instead, so both sides read and
// write whole cache lines while the tile is in L1. Other cases fall back to strided_copy.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kernels.hpp"

namespace dsq_cpu {

template <class T>
inline void copy_tile(const char* s, char* d, int64_t na, int64_t nb, int64_t sa, int64_t sb, int64_t da, int64_t db) {
  // the inner loop writes along b (the destination's fastest axis): strided writes cost several
  // times strided reads (each partial line written is read first), measured on a 4096² transpose
  for (int64_t i = 0; i < na; ++i)
    for (int64_t j = 0; j < nb; ++j)
      *(T*)(d + i * da + j * db) = *(const T*)(s + i * sa + j * sb);
}

// Same contract as strided_copy (strides in elements, same shape on both sides).
inline void blocked_copy(const char* src, const int64_t* src_strides, char* dst, const int64_t* dst_strides,
                         const int64_t* shape, int ndim, int itemsize, int threads) {
  int a = -1, b = -1;                      // the source's and the destination's fastest axes
  for (int k = 0; k < ndim; ++k) {
    if (shape[k] <= 1) continue;
    if (a < 0 || std::llabs(src_strides[k]) < std::llabs(src_strides[a])) a = k;
    if (b < 0 || std::llabs(dst_strides[k]) < std::llabs(dst_strides[b])) b = k;
  }
  int64_t numel = 1;
  for (int k = 0; k < ndim; ++k) numel *= shape[k];
  if (a < 0 || a == b || numel == 0 || (itemsize != 1 && itemsize != 2 && itemsize != 4 && itemsize != 8)) {
    strided_copy(src, src_strides, dst, dst_strides, shape, ndim, itemsize, threads);
    return;
  }
  // a tile is one destination cache line along b by four source cache lines along a (the best of
  // the square and oblong tiles tried on a 4096² float32 transpose: 16 x 64 elements)
  const int64_t Tb = 64 / itemsize, Ta = 256 / itemsize;
  const int64_t ta = (shape[a] + Ta - 1) / Ta, tb = (shape[b] + Tb - 1) / Tb;
  int64_t outer = 1;                       // every other axis, then the tiles
  for (int k = 0; k < ndim; ++k)
    if (k != a && k != b) outer *= shape[k];
  const int64_t work = outer * ta * tb;
#pragma omp parallel for schedule(dynamic, 4) num_threads(team_size(numel, threads))
  for (int64_t w = 0; w < work; ++w) {
    int64_t rem = w / (ta * tb), so = 0, dof = 0;
    const int64_t tile = w % (ta * tb), ia = (tile / tb) * Ta, jb = (tile % tb) * Tb;
    for (int k = ndim - 1; k >= 0; --k) {
      if (k == a || k == b) continue;
      const int64_t i = rem % shape[k];
      rem /= shape[k];
      so += i * src_strides[k];
      dof += i * dst_strides[k];
    }
    so += ia * src_strides[a] + jb * src_strides[b];
    dof += ia * dst_strides[a] + jb * dst_strides[b];
    const int64_t na = std::min(Ta, shape[a] - ia), nb = std::min(Tb, shape[b] - jb);
    const char* s = src + so * itemsize;
    char* d = dst + dof * itemsize;
    const int64_t sa = src_strides[a] * itemsize, sb = src_strides[b] * itemsize;
    const int64_t da = dst_strides[a] * itemsize, db = dst_strides[b] * itemsize;
    switch (itemsize) {
      case 1: copy_tile<uint8_t>(s, d, na, nb, sa, sb, da, db); break;
      case 2: copy_tile<uint16_t>(s, d, na, nb, sa, sb, da, db); break;
      case 4: copy_tile<uint32_t>(s, d, na, nb, sa, sb, da, db); break;
      default: copy_tile<uint64_t>(s, d, na, nb, sa, sb, da, db); break;
    }
  }
}

}  // namespace dsq_cpu
