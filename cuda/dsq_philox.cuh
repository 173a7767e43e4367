// dsq_philox.cuh — Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC'11), counter-based, host AND device. dsquant's stochastic rounding draws one 32-bit word per
// element: element i of a call with (seed, offset) uses stream position p = offset + i, i.e. word
// p % 4 of philox(counter = {p / 4 (64-bit, low word first), 0, 0}, key = {seed lo, seed hi}).
// The draw depends only on (seed, offset, i): not on threads, blocks or the device.
#pragma once
#include "dsq_math.cuh"

namespace dsq {

struct U32x4 { uint32_t v[4]; };

DSQ_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = (uint64_t)a * (uint64_t)b;
  hi = (uint32_t)(p >> 32);
  lo = (uint32_t)p;
}

const uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
const uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;

// One Philox round on the counter words with round key (k0, k1).
DSQ_HD void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0, uint32_t k1) {
  uint32_t hi0, lo0, hi1, lo1;
  mulhilo32(kPhiloxM0, c0, hi0, lo0);
  mulhilo32(kPhiloxM1, c2, hi1, lo1);
  c0 = hi1 ^ c1 ^ k0;
  c1 = lo1;
  c2 = hi0 ^ c3 ^ k1;
  c3 = lo0;
}

DSQ_HD U32x4 philox4x32_10(U32x4 ctr, uint32_t k0, uint32_t k1) {
#ifdef __CUDACC__
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    philox_round(ctr.v[0], ctr.v[1], ctr.v[2], ctr.v[3], k0, k1);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return ctr;
}

// The four words of stream block `block` (positions 4·block .. 4·block + 3).
DSQ_HD U32x4 philox_block(uint64_t seed, uint64_t block) {
  U32x4 c;
  c.v[0] = (uint32_t)block;
  c.v[1] = (uint32_t)(block >> 32);
  c.v[2] = 0u;
  c.v[3] = 0u;
  return philox4x32_10(c, (uint32_t)seed, (uint32_t)(seed >> 32));
}

// A 32-bit word -> float in [0, 1) with 24 random bits (exact).
DSQ_HD float uniform_from_word(uint32_t w) { return (float)(int32_t)(w >> 8) * 5.9604644775390625e-08f; }

// Word i (0..3) of a block, chosen with selects: a run-time index into the array would put the
// block in (slow) local memory on the GPU.
DSQ_HD uint32_t word_of(const U32x4& w, uint32_t i) {
  return i == 0u ? w.v[0] : i == 1u ? w.v[1] : i == 2u ? w.v[2] : w.v[3];
}

// The uniform of stream position p.
DSQ_HD float uniform_at(uint64_t seed, uint64_t p) {
  return uniform_from_word(word_of(philox_block(seed, p >> 2), (uint32_t)p & 3u));
}

}  // namespace dsq
