# cython: language_level=3, boundscheck=False, wraparound=False
"""CPU kernels: the shared math of cuda/*.cuh compiled as C++ and run with OpenMP.

Kernels are called by name with their argument struct packed as bytes (``signatures.py`` packs
them; ``entries.hpp`` lists the kernels); each call releases the GIL for the whole computation.
"""
from libc.stdint cimport int64_t, uintptr_t
from libc.stdlib cimport getenv as c_getenv

cdef extern from "entries.hpp" namespace "dsq_cpu" nogil:
    ctypedef struct Entry:
        const char* name
        void (*run)(int dtype, const void* args) noexcept nogil
        size_t args_size
    int num_entries()
    const Entry* entry(int i)
    const char* isa_in_use()
    const char* isa_name(int isa)
    int isa_by_name(const char* name)
    int cpu_best_isa()
    void set_isa_cap(int isa)
    int NUM_ISAS
    void c_strided_copy "dsq_cpu::strided_copy"(const char* src, const int64_t* src_strides, char* dst,
                                                const int64_t* dst_strides, const int64_t* shape,
                                                int ndim, int itemsize, int threads)
    int c_max_threads "dsq_cpu::max_threads"()
    int c_team_size "dsq_cpu::team_size"(int64_t elements, int threads)

cdef extern from "regroup.hpp" nogil:
    void c_blocked_copy "dsq_cpu::blocked_copy"(const char* src, const int64_t* src_strides, char* dst,
                                                const int64_t* dst_strides, const int64_t* shape,
                                                int ndim, int itemsize, int threads)


def max_threads():
    return c_max_threads()


def team_size(int64_t elements, int threads):
    """The threads a kernel call on `elements` elements asked to use `threads` would run on now
    (kernels.hpp team_size: 1 below 2^16 elements; else at most the CPUs that no other runnable
    task holds, unless DSQUANT_CPU_LOAD_AWARE=0)."""
    return c_team_size(elements, threads)


def isa():
    """The instruction-set tier of the per-range loops in use: "avx512", "avx2" or "baseline"."""
    return isa_in_use().decode()


def isas():
    """The tiers this CPU (and OS) can run the loops in, baseline first."""
    return tuple(isa_name(i).decode() for i in range(cpu_best_isa() + 1))


def set_isa(str name):
    """Use the loops of tier `name` (one of :func:`isas`) or, "best", the best this CPU has. For
    tests and benchmarks: every tier gives the same bits. DSQUANT_CPU_ISA=name at start does the same."""
    if name == "best":
        set_isa_cap(NUM_ISAS - 1)
        return
    if name not in isas():
        raise ValueError(f"CPU instruction set {name!r} is not one this CPU runs; use one of {isas()} or 'best'")
    set_isa_cap(isa_by_name(name.encode()))


def set_baseline(bint on):
    """Force the baseline x86-64 loops (True) or use the best this CPU has (False).
    DSQUANT_CPU_BASELINE=1 forces them from the start."""
    set_isa_cap(0 if on else NUM_ISAS - 1)


def kernels():
    """{kernel name: (index, bytes of its argument struct)}."""
    return {entry(i).name.decode(): (i, entry(i).args_size) for i in range(num_entries())}


def run(int index, int dtype, bytes args):
    """Run kernel `index` (see :func:`kernels`) on elements of dsquant dtype code `dtype` with its
    argument struct packed in `args`."""
    if not 0 <= index < num_entries():
        raise IndexError(f"no CPU kernel {index}")
    cdef const Entry* e = entry(index)
    if <size_t>len(args) != e.args_size:
        raise ValueError(f"{e.name.decode()} takes {e.args_size} bytes of arguments, got {len(args)}")
    cdef const char* packed = args      # `args` is referenced for the whole call
    with nogil:
        e.run(dtype, packed)


cdef int _layouts(src_strides, dst_strides, shape, int64_t* ss, int64_t* ds, int64_t* sh) except -1:
    """Fills the C arrays of a copy's strides and shape (at most 32 dimensions); returns ndim."""
    cdef int ndim = len(shape)
    if ndim > 32:
        raise ValueError(f"arrays of more than 32 dimensions are not supported (got {ndim})")
    for i in range(ndim):
        ss[i] = src_strides[i]
        ds[i] = dst_strides[i]
        sh[i] = shape[i]
    return ndim


def strided_copy(uintptr_t src, src_strides, uintptr_t dst, dst_strides, shape, int itemsize, int threads):
    """Copy between two layouts of the same shape (strides in elements)."""
    cdef int64_t ss[32]
    cdef int64_t ds[32]
    cdef int64_t sh[32]
    cdef int ndim = _layouts(src_strides, dst_strides, shape, ss, ds, sh)
    with nogil:
        c_strided_copy(<const char*>src, ss, <char*>dst, ds, sh, ndim, itemsize, threads)


def blocked_copy(uintptr_t src, src_strides, uintptr_t dst, dst_strides, shape, int itemsize, int threads):
    """strided_copy through tiles of the two sides' fastest axes (regroup.hpp): for transposes."""
    cdef int64_t ss[32]
    cdef int64_t ds[32]
    cdef int64_t sh[32]
    cdef int ndim = _layouts(src_strides, dst_strides, shape, ss, ds, sh)
    with nogil:
        c_blocked_copy(<const char*>src, ss, <char*>dst, ds, sh, ndim, itemsize, threads)


def getenv(bytes name):
    """The process environment's value of `name` (C getenv: sees what os.environ sets), or None;
    a fraction of os.environ.get's cost, for the per-call thread count."""
    cdef const char* value = c_getenv(name)
    return None if value is NULL else <bytes>value


cdef extern from "xla_ffi.hpp" namespace "dsq_xla":
    ctypedef struct XLA_FFI_CallFrame:
        pass
    ctypedef void* (*XlaHandler)(XLA_FFI_CallFrame*)
    void* xla_fake_quantize "dsq_xla::fake_quantize"(XLA_FFI_CallFrame*)
    void* xla_quantize "dsq_xla::quantize"(XLA_FFI_CallFrame*)
    void* xla_dequantize "dsq_xla::dequantize"(XLA_FFI_CallFrame*)
    void* xla_gpu_refusal "dsq_xla::gpu_refusal"(XLA_FFI_CallFrame*)

from cpython.pycapsule cimport PyCapsule_New


def xla_handlers():
    """{XLA FFI target name: PyCapsule of its handler} for ``jax.ffi.register_ffi_target``
    (api_version=1, platform "cpu"); xla_ffi.hpp says what each takes."""
    return {"dsquant_fake_quantize": PyCapsule_New(<void*>xla_fake_quantize, NULL, NULL),
            "dsquant_quantize": PyCapsule_New(<void*>xla_quantize, NULL, NULL),
            "dsquant_dequantize": PyCapsule_New(<void*>xla_dequantize, NULL, NULL)}


def xla_gpu_refusals():
    """The same targets for the CUDA platform: a handler that fails with a clear message (dsquant
    has no XLA GPU handler yet)."""
    return {name: PyCapsule_New(<void*>xla_gpu_refusal, NULL, NULL) for name in xla_handlers()}
