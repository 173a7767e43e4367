# cython: language_level=3, boundscheck=False, wraparound=False
"""CPU kernels: the shared math of cuda/*.cuh compiled as C++ and run with OpenMP.

Every function takes plain integers (addresses, sizes, codes) resolved by the caller, and
releases the GIL for the whole computation.
"""
from libc.stdint cimport int64_t, uint64_t, uintptr_t
from libcpp cimport bool as cbool

cdef extern from "_cpu_kernels.hpp" namespace "dsq_cpu" nogil:
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
    void c_strided_copy "dsq_cpu::strided_copy"(const char* src, const int64_t* src_strides, char* dst,
                                                const int64_t* dst_strides, const int64_t* shape,
                                                int ndim, int itemsize, int threads)
    int c_max_threads "dsq_cpu::max_threads"()


def max_threads():
    return c_max_threads()


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
