// The CPU kernels as one table the Python side calls by name: each entry takes its argument
// struct (kernels.hpp, static.hpp, zeropp.hpp) as bytes packed by dsquant/backends/cpu/signatures.py, which
// lists the same fields in the same order. args_size lets that module check the layout at import.
#pragma once
#include <cstddef>

#include "kernels.hpp"
#include "static.hpp"
#include "zeropp.hpp"

namespace dsq_cpu {

struct Entry {
  const char* name;
  void (*run)(int dtype, const void* args);
  size_t args_size;
};

template <class A, void (*F)(int, const A&)> void typed_entry(int dtype, const void* a) {
  F(dtype, *static_cast<const A*>(a));
}
template <class A, void (*F)(const A&)> void untyped_entry(int, const void* a) { F(*static_cast<const A*>(a)); }

inline const Entry kEntries[] = {
    {"fake_quantize", &typed_entry<FakeArgs, fake_quantize>, sizeof(FakeArgs)},
    {"int_quantize", &typed_entry<IntQuantArgs, int_quantize>, sizeof(IntQuantArgs)},
    {"int_dequantize", &typed_entry<IntDequantArgs, int_dequantize>, sizeof(IntDequantArgs)},
    {"int_quantize_given", &typed_entry<IntQuantGivenArgs, int_quantize_given>, sizeof(IntQuantGivenArgs)},
    {"uint_dequantize_half", &untyped_entry<UintHalfArgs, uint_dequantize_half>, sizeof(UintHalfArgs)},
    {"swizzle_quantize", &typed_entry<SwizzleArgs, swizzle_quantize>, sizeof(SwizzleArgs)},
    {"quantized_reduction", &untyped_entry<ReduceArgs, quantized_reduction>, sizeof(ReduceArgs)},
};
inline int num_entries() { return (int)(sizeof(kEntries) / sizeof(kEntries[0])); }
inline const Entry* entry(int i) { return &kEntries[i]; }

// The instruction set the per-range loops of this process use.
inline const char* isa_in_use() { return use_avx2() ? "avx2" : "baseline"; }

}  // namespace dsq_cpu
