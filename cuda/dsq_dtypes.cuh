// Generated from dsquant/core/dtypes.py by `python -m dsquant.core.dtypes`: do not edit.
#pragma once
namespace dsq {
enum DType : int { DT_FLOAT16 = 0, DT_BFLOAT16 = 1, DT_FLOAT32 = 2, DT_FLOAT64 = 3 };
constexpr int NUM_DTYPES = 4;
}  // namespace dsq
// X(code, format struct) for every dtype, in code order
#define DSQ_FOR_EACH_DTYPE(X) X(DT_FLOAT16, F16) X(DT_BFLOAT16, BF16) X(DT_FLOAT32, F32) X(DT_FLOAT64, F64)
