// XLA FFI handlers (CPU) for jax.jit / jax.vmap: the same CPU kernels as the NumPy path
// (kernels.hpp), called by XLA on its buffers. Written against XLA's FFI C API only
// (third_party/xla/xla/ffi/api/c_api.h, vendored), so building them needs no jax; dsquant/jax.py
// registers them with jax.ffi.register_ffi_target on first JAX use.
//
// Batching (jax.vmap with vmap_method="broadcast_all"): every operand arrives with the batch
// dimensions in front, so a batch of B calls is B contiguous copies of one call's layout:
//  * fake_quantize: attrs `groups` and `numel` are one call's; B = n / numel. Nearest rounding
//    runs one kernel over B*groups groups (groups are contiguous runs: the same bits); stochastic
//    rounding runs each call with its own (seed, offset) from `rng` ([B, 4] uint32), as a loop would.
//  * quantize / dequantize: the group count is read from the params buffer ([..., groups, 1|2]),
//    which carries the batch too; codes of one call fill whole bytes, so calls do not share bytes.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

#include "kernels.hpp"
#include "xla/ffi/api/c_api.h"

namespace dsq_xla {

inline XLA_FFI_Error* fail(const XLA_FFI_CallFrame* f, const std::string& message,
                           XLA_FFI_Error_Code code = XLA_FFI_Error_Code_INVALID_ARGUMENT) {
  XLA_FFI_Error_Create_Args a;
  std::memset(&a, 0, sizeof a);
  a.struct_size = XLA_FFI_Error_Create_Args_STRUCT_SIZE;
  a.message = message.c_str();   // XLA copies it
  a.errc = code;
  return f->api->XLA_FFI_Error_Create(&a);
}

// XLA asks a handler which FFI version it was built against before it first runs it.
inline bool metadata_query(XLA_FFI_CallFrame* f) {
  XLA_FFI_Extension_Base* e = f->extension_start;
  if (e == nullptr || e->type != XLA_FFI_Extension_Metadata) return false;
  XLA_FFI_Metadata* m = reinterpret_cast<XLA_FFI_Metadata_Extension*>(e)->metadata;
  m->api_version = XLA_FFI_Api_Version{XLA_FFI_Api_Version_STRUCT_SIZE, nullptr, XLA_FFI_API_MAJOR,
                                       XLA_FFI_API_MINOR};
  m->traits = 0;
  return true;
}

inline int64_t numel(const XLA_FFI_Buffer* b) {
  int64_t n = 1;
  for (int64_t d = 0; d < b->rank; ++d) n *= b->dims[d];
  return n;
}

// dsq::DType of an XLA float type, -1 for others.
inline int dsq_dtype(XLA_FFI_DataType t) {
  switch (t) {
    case XLA_FFI_DataType_F16: return dsq::DT_FLOAT16;
    case XLA_FFI_DataType_BF16: return dsq::DT_BFLOAT16;
    case XLA_FFI_DataType_F32: return dsq::DT_FLOAT32;
    case XLA_FFI_DataType_F64: return dsq::DT_FLOAT64;
    default: return -1;
  }
}

// The call frame's buffers and integer attributes, checked once.
struct Frame {
  XLA_FFI_CallFrame* f;
  std::string error;

  const XLA_FFI_Buffer* arg(int64_t i) {
    if (i >= f->args.size || f->args.types[i] != XLA_FFI_ArgType_BUFFER) {
      error = "operand " + std::to_string(i) + " missing or not a buffer";
      return nullptr;
    }
    return static_cast<const XLA_FFI_Buffer*>(f->args.args[i]);
  }
  const XLA_FFI_Buffer* ret(int64_t i) {
    if (i >= f->rets.size || f->rets.types[i] != XLA_FFI_RetType_BUFFER) {
      error = "result " + std::to_string(i) + " missing or not a buffer";
      return nullptr;
    }
    return static_cast<const XLA_FFI_Buffer*>(f->rets.rets[i]);
  }
  // An integer (or bool) scalar attribute; sets `error` when absent.
  int64_t attr(const char* name) {
    const size_t len = std::strlen(name);
    for (int64_t i = 0; i < f->attrs.size; ++i) {
      const XLA_FFI_ByteSpan* s = f->attrs.names[i];
      if (s->len != len || std::memcmp(s->ptr, name, len) != 0) continue;
      if (f->attrs.types[i] == XLA_FFI_AttrType_SCALAR) {
        const XLA_FFI_Scalar* v = static_cast<const XLA_FFI_Scalar*>(f->attrs.attrs[i]);
        switch (v->dtype) {
          case XLA_FFI_DataType_PRED: return *static_cast<const bool*>(v->value);
          case XLA_FFI_DataType_S32: return *static_cast<const int32_t*>(v->value);
          case XLA_FFI_DataType_S64: return *static_cast<const int64_t*>(v->value);
          default: break;
        }
      }
      error = std::string("attribute ") + name + " is not an int32, int64 or bool scalar";
      return 0;
    }
    error = std::string("attribute ") + name + " missing";
    return 0;
  }
  bool ok() const { return error.empty(); }
};

// XLA:CPU runs its work, custom calls included, on threads that flush subnormals to zero (FTZ and
// DAZ set in MXCSR; FZ in FPCR on AArch64), which the numerics contract forbids (subnormal inputs
// are valid, docs/numerics.md). The handlers run the kernels with IEEE subnormals and give the
// thread its mode back. OpenMP workers inherit the mode of the thread that creates them, and the
// workers of an XLA thread are created by dsquant's parallel regions only, so they start IEEE too.
class IeeeSubnormals {
 public:
  IeeeSubnormals() : saved_(get()) { set(saved_ & ~kFlushBits); }
  ~IeeeSubnormals() { set(saved_); }
  IeeeSubnormals(const IeeeSubnormals&) = delete;
  IeeeSubnormals& operator=(const IeeeSubnormals&) = delete;

 private:
#if defined(__x86_64__)
  static constexpr uint64_t kFlushBits = (1u << 15) | (1u << 6);     // FTZ, DAZ
  static uint64_t get() { return _mm_getcsr(); }
  static void set(uint64_t v) { _mm_setcsr((unsigned)v); }
#elif defined(__aarch64__)
  static constexpr uint64_t kFlushBits = (1ull << 24) | (1ull << 19);  // FZ, FZ16
  static uint64_t get() { uint64_t v; __asm__ volatile("mrs %0, fpcr" : "=r"(v)); return v; }
  static void set(uint64_t v) { __asm__ volatile("msr fpcr, %0" : : "r"(v)); }
#else
  static constexpr uint64_t kFlushBits = 0;
  static uint64_t get() { return 0; }
  static void set(uint64_t) {}
#endif
  uint64_t saved_;
};

#define DSQ_XLA_PROLOGUE(frame)                                                              \
  if (metadata_query(call_frame)) return nullptr;                                            \
  if (call_frame->stage != XLA_FFI_ExecutionStage_EXECUTE)                                   \
    return fail(call_frame, "dsquant's FFI handlers run only in the execute stage");         \
  const IeeeSubnormals ieee_subnormals;                                                      \
  Frame frame{call_frame, {}}

// Operands: x (float), rng (uint32 [..., 4]: seed low, seed high, offset low, offset high per
// call). Result: y (x's type and shape). Attrs: groups, numel (of one unbatched call), bits,
// symmetric, stochastic, threads.
inline XLA_FFI_Error* fake_quantize(XLA_FFI_CallFrame* call_frame) {
  DSQ_XLA_PROLOGUE(fr);
  const XLA_FFI_Buffer *x = fr.arg(0), *rng = fr.arg(1), *y = fr.ret(0);
  const int64_t groups = fr.attr("groups"), per_call = fr.attr("numel"), bits = fr.attr("bits");
  const bool symmetric = fr.attr("symmetric") != 0, stochastic = fr.attr("stochastic") != 0;
  const int threads = (int)fr.attr("threads");
  if (!fr.ok()) return fail(call_frame, "dsquant_fake_quantize: " + fr.error);
  const int dtype = dsq_dtype(x->dtype);
  const int64_t n = numel(x);
  if (dtype < 0 || y->dtype != x->dtype || numel(y) != n || rng->dtype != XLA_FFI_DataType_U32)
    return fail(call_frame, "dsquant_fake_quantize: x must be float16/bfloat16/float32/float64, y like x, rng uint32");
  if (n == 0) return nullptr;
  if (per_call <= 0 || groups <= 0 || n % per_call || per_call % groups)
    return fail(call_frame, "dsquant_fake_quantize: " + std::to_string(n) + " elements are not whole calls of " +
                            std::to_string(per_call) + " elements in " + std::to_string(groups) + " groups");
  const int64_t batches = n / per_call, seeds = numel(rng) / 4;
  if (numel(rng) % 4 || (seeds != 1 && seeds != batches))
    return fail(call_frame, "dsquant_fake_quantize: rng must hold 4 words per call");
  const uint32_t* w = static_cast<const uint32_t*>(rng->data);
  dsq_cpu::FakeArgs a{x->data, y->data, n, groups * batches, (int)bits, symmetric, stochastic, 0, 0, threads};
  if (!stochastic) {
    dsq_cpu::fake_quantize(dtype, a);
    return nullptr;
  }
  const int64_t item = x->dtype == XLA_FFI_DataType_F64 ? 8 : (x->dtype == XLA_FFI_DataType_F32 ? 4 : 2);
  for (int64_t b = 0; b < batches; ++b) {
    const uint32_t* r = w + 4 * (seeds == 1 ? 0 : b);
    a.in = static_cast<const char*>(x->data) + b * per_call * item;
    a.out = static_cast<char*>(y->data) + b * per_call * item;
    a.n = per_call;
    a.groups = groups;
    a.seed = (uint64_t)r[0] | ((uint64_t)r[1] << 32);
    a.offset = (uint64_t)r[2] | ((uint64_t)r[3] << 32);
    dsq_cpu::fake_quantize(dtype, a);
  }
  return nullptr;
}

// The group count and scheme of a params buffer [..., groups, 1 | 2].
inline bool params_layout(const XLA_FFI_Buffer* p, int64_t* groups, bool* symmetric) {
  if (p->dtype != XLA_FFI_DataType_F32 || p->rank < 1) return false;
  const int64_t k = p->dims[p->rank - 1];
  if (k != 1 && k != 2) return false;
  *groups = numel(p) / k;
  *symmetric = k == 1;
  return true;
}

// Operand: x (float). Results: q (int8 codes), params (float32 [..., groups, 1|2]). Attrs: bits, threads.
inline XLA_FFI_Error* quantize(XLA_FFI_CallFrame* call_frame) {
  DSQ_XLA_PROLOGUE(fr);
  const XLA_FFI_Buffer *x = fr.arg(0), *q = fr.ret(0), *params = fr.ret(1);
  const int64_t bits = fr.attr("bits");
  const int threads = (int)fr.attr("threads");
  if (!fr.ok()) return fail(call_frame, "dsquant_quantize: " + fr.error);
  int64_t groups = 0;
  bool symmetric = true;
  const int dtype = dsq_dtype(x->dtype);
  const int64_t n = numel(x);
  if (dtype < 0 || q->dtype != XLA_FFI_DataType_S8 || !params_layout(params, &groups, &symmetric))
    return fail(call_frame, "dsquant_quantize: x must be a float array, q int8, params float32 [..., groups, 1|2]");
  const int64_t per = dsq::int_codes_per_byte((int)bits);
  if (groups <= 0 || n % groups || numel(q) * per != n)
    return fail(call_frame, "dsquant_quantize: the shapes of x, q and params do not agree");
  dsq_cpu::IntQuantArgs a{x->data, static_cast<uint8_t*>(q->data), static_cast<float*>(params->data), n, groups,
                          (int)bits, symmetric, threads};
  dsq_cpu::int_quantize(dtype, a);
  return nullptr;
}

// Operands: q (int8 or uint8 codes), params (float32 [..., groups, 1|2]). Result: y (float). Attrs: bits, threads.
inline XLA_FFI_Error* dequantize(XLA_FFI_CallFrame* call_frame) {
  DSQ_XLA_PROLOGUE(fr);
  const XLA_FFI_Buffer *q = fr.arg(0), *params = fr.arg(1), *y = fr.ret(0);
  const int64_t bits = fr.attr("bits");
  const int threads = (int)fr.attr("threads");
  if (!fr.ok()) return fail(call_frame, "dsquant_dequantize: " + fr.error);
  int64_t groups = 0;
  bool symmetric = true;
  const int dtype = dsq_dtype(y->dtype);
  const int64_t n = numel(y);
  if (dtype < 0 || (q->dtype != XLA_FFI_DataType_S8 && q->dtype != XLA_FFI_DataType_U8) ||
      !params_layout(params, &groups, &symmetric))
    return fail(call_frame, "dsquant_dequantize: q must be int8/uint8, params float32 [..., groups, 1|2], y float");
  const int64_t per = dsq::int_codes_per_byte((int)bits);
  if (groups <= 0 || n % groups || numel(q) * per != n)
    return fail(call_frame, "dsquant_dequantize: the shapes of q, params and y do not agree");
  dsq_cpu::IntDequantArgs a{static_cast<const uint8_t*>(q->data), static_cast<const float*>(params->data), y->data,
                            n, groups, (int)bits, symmetric, threads};
  dsq_cpu::int_dequantize(dtype, a);
  return nullptr;
}

// Registered for the CUDA platform under each target's name: dsquant has no GPU handler yet, so a
// jitted call on a GPU fails with this message instead of XLA's "no registered implementation".
inline XLA_FFI_Error* gpu_refusal(XLA_FFI_CallFrame* call_frame) {
  if (metadata_query(call_frame)) return nullptr;
  return fail(call_frame,
              "dsquant under jax.jit runs on the CPU only (no XLA GPU handler yet, docs/training.md): call "
              "dsquant outside jax.jit on GPU arrays (the CUDA kernels run through DLPack), or jit on the CPU",
              XLA_FFI_Error_Code_UNIMPLEMENTED);
}

#undef DSQ_XLA_PROLOGUE

}  // namespace dsq_xla
