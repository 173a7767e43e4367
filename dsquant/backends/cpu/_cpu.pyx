# cython: language_level=3, boundscheck=False, wraparound=False
"""CPU kernels: the shared math of cuda/*.cuh compiled as C++ and run with OpenMP.

Every function takes plain integers (addresses, sizes, codes) resolved by the caller, and
releases the GIL for the whole computation.
"""
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint64_t, uintptr_t
from libcpp cimport bool as cbool

cdef extern from "kernels.hpp" namespace "dsq_cpu" nogil:
    cdef struct FakeArgs:
        const void* in_ "in"
        void* out
        int64_t n
        int64_t groups
        int bits
        cbool symmetric
        cbool stochastic
        uint64_t seed
        uint64_t offset
        int threads
    void c_fake_quantize "dsq_cpu::fake_quantize"(int dtype, const FakeArgs& a)
    cdef struct IntQuantArgs:
        const void* in_ "in"
        uint8_t* q
        float* params
        int64_t n
        int64_t groups
        int bits
        cbool symmetric
        int threads
    void c_int_quantize "dsq_cpu::int_quantize"(int dtype, const IntQuantArgs& a)
    cdef struct IntDequantArgs:
        const uint8_t* q
        const float* params
        void* out
        int64_t n
        int64_t groups
        int bits
        cbool symmetric
        int threads
    void c_int_dequantize "dsq_cpu::int_dequantize"(int dtype, const IntDequantArgs& a)
    cdef struct UintHalfArgs:
        const uint8_t* q
        const uint16_t* scale
        const uint16_t* minimum
        uint16_t* out
        int64_t num_group
        int64_t group_size
        int bits
        int threads
    void c_uint_dequantize_half "dsq_cpu::uint_dequantize_half"(const UintHalfArgs& a)
    void c_strided_copy "dsq_cpu::strided_copy"(const char* src, const int64_t* src_strides, char* dst,
                                                const int64_t* dst_strides, const int64_t* shape,
                                                int ndim, int itemsize, int threads)
    int c_max_threads "dsq_cpu::max_threads"()
    cbool c_use_avx2 "dsq_cpu::use_avx2"()


def max_threads():
    return c_max_threads()


def isa():
    """The instruction set of the loops for_this_cpu() picks: "avx2" (AVX2 + FMA + F16C) or "baseline"."""
    return "avx2" if c_use_avx2() else "baseline"


def fake_quantize(uintptr_t src, uintptr_t dst, int dtype, int64_t n, int64_t groups, int bits,
                  bint symmetric, bint stochastic, uint64_t seed, uint64_t offset, int threads):
    cdef FakeArgs a
    a.in_ = <const void*>src
    a.out = <void*>dst
    a.n = n
    a.groups = groups
    a.bits = bits
    a.symmetric = symmetric
    a.stochastic = stochastic
    a.seed = seed
    a.offset = offset
    a.threads = threads
    with nogil:
        c_fake_quantize(dtype, a)


def int_quantize(uintptr_t src, uintptr_t q, uintptr_t params, int dtype, int64_t n, int64_t groups,
                 int bits, bint symmetric, int threads):
    """Integer codes of n elements (dtype code `dtype`) into q and float32 params into params."""
    cdef IntQuantArgs a
    a.in_ = <const void*>src
    a.q = <uint8_t*>q
    a.params = <float*>params
    a.n = n
    a.groups = groups
    a.bits = bits
    a.symmetric = symmetric
    a.threads = threads
    with nogil:
        c_int_quantize(dtype, a)


def int_dequantize(uintptr_t q, uintptr_t params, uintptr_t dst, int dtype, int64_t n, int64_t groups,
                   int bits, bint symmetric, int threads):
    """n values of dtype code `dtype` into dst from the codes q and float32 params."""
    cdef IntDequantArgs a
    a.q = <const uint8_t*>q
    a.params = <const float*>params
    a.out = <void*>dst
    a.n = n
    a.groups = groups
    a.bits = bits
    a.symmetric = symmetric
    a.threads = threads
    with nogil:
        c_int_dequantize(dtype, a)


def uint_dequantize_half(uintptr_t q, uintptr_t scale, uintptr_t minimum, uintptr_t dst, int64_t num_group,
                         int64_t group_size, int bits, int threads):
    """float16 [num_group, group_size] from unsigned codes and float16 scale/minimum per group."""
    cdef UintHalfArgs a
    a.q = <const uint8_t*>q
    a.scale = <const uint16_t*>scale
    a.minimum = <const uint16_t*>minimum
    a.out = <uint16_t*>dst
    a.num_group = num_group
    a.group_size = group_size
    a.bits = bits
    a.threads = threads
    with nogil:
        c_uint_dequantize_half(a)


def strided_copy(uintptr_t src, src_strides, uintptr_t dst, dst_strides, shape, int itemsize, int threads):
    """Copy between two layouts of the same shape (strides in elements)."""
    cdef int ndim = len(shape)
    if ndim > 32:
        raise ValueError(f"arrays of more than 32 dimensions are not supported (got {ndim})")
    cdef int64_t ss[32]
    cdef int64_t ds[32]
    cdef int64_t sh[32]
    for i in range(ndim):
        ss[i] = src_strides[i]
        ds[i] = dst_strides[i]
        sh[i] = shape[i]
    with nogil:
        c_strided_copy(<const char*>src, ss, <char*>dst, ds, sh, ndim, itemsize, threads)


# ------------------------------------------------------------------ ZeRO++ communication ops
cdef extern from "zeropp.hpp" namespace "dsq_cpu" nogil:
    cdef struct SwizzleArgs:
        const void* in_ "in"
        uint8_t* q
        float* params
        void* err
        int err_dtype
        float beta
        int64_t n
        int64_t groups
        int64_t pipe
        int64_t nodes
        int64_t dpn
        int bits
        cbool symmetric
        int threads
    void c_swizzle_quantize "dsq_cpu::swizzle_quantize"(int dtype, const SwizzleArgs& a)
    cdef struct ReduceArgs:
        const uint8_t* q_in
        const float* params_in
        uint8_t* q
        float* params
        void* err
        int err_dtype
        float beta
        int64_t n
        int64_t in_groups
        int64_t groups
        int64_t devices
        int bits
        cbool symmetric
        cbool half_accumulate
        int threads
    void c_quantized_reduction "dsq_cpu::quantized_reduction"(const ReduceArgs& a)


def swizzle_quantize(uintptr_t src, uintptr_t q, uintptr_t params, int dtype, int64_t n, int64_t groups,
                     int bits, bint symmetric, int64_t pipe, int64_t nodes, int64_t dpn,
                     uintptr_t err, int err_dtype, float beta, int threads):
    """Codes and params of n elements in swizzled group order; LoCo error feedback when err != 0."""
    cdef SwizzleArgs a
    a.in_ = <const void*>src
    a.q = <uint8_t*>q
    a.params = <float*>params
    a.err = <void*>err
    a.err_dtype = err_dtype
    a.beta = beta
    a.n = n
    a.groups = groups
    a.pipe = pipe
    a.nodes = nodes
    a.dpn = dpn
    a.bits = bits
    a.symmetric = symmetric
    a.threads = threads
    with nogil:
        c_swizzle_quantize(dtype, a)


def quantized_reduction(uintptr_t q_in, uintptr_t params_in, uintptr_t q, uintptr_t params, int64_t n,
                        int64_t in_groups, int64_t groups, int64_t devices, int bits, bint symmetric,
                        bint half_accumulate, uintptr_t err, int err_dtype, float beta, int threads):
    """Sum of `devices` slabs of n quantized values, requantized; LoCo error feedback when err != 0."""
    cdef ReduceArgs a
    a.q_in = <const uint8_t*>q_in
    a.params_in = <const float*>params_in
    a.q = <uint8_t*>q
    a.params = <float*>params
    a.err = <void*>err
    a.err_dtype = err_dtype
    a.beta = beta
    a.n = n
    a.in_groups = in_groups
    a.groups = groups
    a.devices = devices
    a.bits = bits
    a.symmetric = symmetric
    a.half_accumulate = half_accumulate
    a.threads = threads
    with nogil:
        c_quantized_reduction(a)
