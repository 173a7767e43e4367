# cython: language_level=3, boundscheck=False, wraparound=False
"""DLPack consumer (an owning view of any array) and exporter (library-owned output buffers).

Consumption follows the DLPack rules: ask for ``max_version=(1, 0)`` and fall back to the legacy
protocol, accept both capsule names, rename a consumed capsule to ``used_...``, call the producer's
deleter exactly once (with the GIL), reject a newer major version.
"""
from cpython.buffer cimport (PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES, PyBuffer_Release,
                             PyObject_GetBuffer)
from cpython.pycapsule cimport (PyCapsule_GetPointer, PyCapsule_IsValid, PyCapsule_New,
                                PyCapsule_SetName)
from libc.stdint cimport int64_t, uint64_t, uintptr_t, uint8_t, int32_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from cpython.ref cimport Py_INCREF
cimport numpy as cnp

cdef extern from "numpy/arrayobject.h":
    # (NumPy's own .pxd leaves it out; it steals a reference to `descr`)
    object PyArray_NewFromDescr(type subtype, cnp.dtype descr, int nd, cnp.npy_intp* dims, cnp.npy_intp* strides,
                                void* data, int flags, object obj)

cnp.import_array()

cdef extern from "_dlpack.h":
    ctypedef struct DLDevice:
        int32_t device_type
        int32_t device_id
    ctypedef struct DLDataType:
        uint8_t code
        uint8_t bits
        unsigned short lanes
    ctypedef struct DLTensor:
        void* data
        DLDevice device
        int32_t ndim
        DLDataType dtype
        int64_t* shape
        int64_t* strides
        uint64_t byte_offset
    ctypedef struct DLManagedTensor:
        DLTensor dl_tensor
        void* manager_ctx
        void (*deleter)(DLManagedTensor*) noexcept
    ctypedef struct DLPackVersion:
        unsigned int major
        unsigned int minor
    ctypedef struct DLManagedTensorVersioned:
        DLPackVersion version
        void* manager_ctx
        void (*deleter)(DLManagedTensorVersioned*) noexcept
        uint64_t flags
        DLTensor dl_tensor
    enum:
        kDLCPU
        kDLCUDA
        kDLCUDAHost
        kDLCUDAManaged
        kDLFloat
        kDLBfloat
        kDLInt
        kDLUInt
    uint64_t DLPACK_FLAG_BITMASK_READ_ONLY

cdef extern from "dsq_buffers.h" namespace "dsq_buffers" nogil:
    void* buffer_allocate "dsq_buffers::allocate"(size_t n, size_t* capacity)
    void buffer_release "dsq_buffers::release"(void* p, size_t capacity)
    size_t buffer_set_limit "dsq_buffers::set_limit"(size_t limit)
    ctypedef struct BufferInfo "dsq_buffers::Info":
        size_t limit
        size_t held
        int count
        uint64_t hits
        uint64_t misses
    BufferInfo buffer_info "dsq_buffers::info"()
    void buffer_after_fork "dsq_buffers::after_fork_in_child"()
    size_t kBigBytes


def buffer_cache_info():
    """The result-buffer cache (dsq_buffers.h): {"limit", "held" (bytes), "buffers", "hits", "misses"}."""
    cdef BufferInfo i = buffer_info()
    return {"limit": i.limit, "held": i.held, "buffers": i.count, "hits": i.hits, "misses": i.misses}


def set_buffer_cache_limit(size_t limit):
    """Unmap every cached result buffer and keep at most `limit` bytes from now on (0: no cache);
    returns the bytes given back to the system."""
    return buffer_set_limit(limit)


def _after_fork_in_child():
    buffer_after_fork()


BIG_BUFFER_BYTES = kBigBytes     # results from this size on come from the cache / fresh mappings


def _configure_cache():
    import os
    env = os.environ.get("DSQUANT_BUFFER_CACHE_MB")
    if env:
        try:
            mib = float(env)
        except ValueError:
            raise ValueError(f"DSQUANT_BUFFER_CACHE_MB must be a number of MiB (0 disables the result-buffer "
                             f"cache), got {env!r}") from None
        if mib < 0:
            raise ValueError(f"DSQUANT_BUFFER_CACHE_MB must be >= 0, got {env!r}")
        set_buffer_cache_limit(<size_t>(mib * (1 << 20)))
    os.register_at_fork(after_in_child=_after_fork_in_child)


_configure_cache()


from dsquant.core import dtypes as _dtypes
from dsquant.core import fp_formats as _fp_formats

# (dsquant dtype code (dsq::DType; -1: not one dsquant quantizes), name) by DLPack (code, bits):
# the float dtypes of the one dtype table, and the FP8 element types fp_dequantize takes codes as.
_DTYPES = {d.dlpack: (d.code, d.name) for d in _dtypes.FLOAT_DTYPES}
_DTYPES.update({(f.dlpack, 8): (-1, name) for name, f in _fp_formats.FLOAT8.items()})
DTYPE_NAMES = _dtypes.NAMES
_DL_OF_DTYPE = {d.code: d.dlpack for d in _dtypes.FLOAT_DTYPES}
_DL_CODE_NAMES = {0: "int", 1: "uint", 2: "float", 3: "opaque", 4: "bfloat", 5: "complex", 6: "bool"}


cdef tuple _dtype_of(int code, int bits, int lanes):
    """(dsquant dtype code or -1, name) of a DLPack element type."""
    key = (code, bits)
    if lanes == 1 and key in _DTYPES:
        return _DTYPES[key]
    name = f"{_DL_CODE_NAMES.get(code, code)}{bits}"
    return -1, (name if lanes == 1 else f"{name}x{lanes}")

# DLPack (code, bits) of the non-float buffers dsquant exports (integer codes).
DL_INT8 = (kDLInt, 8)

DEVICE_CPU = kDLCPU
DEVICE_CUDA = kDLCUDA
DEVICE_CUDA_HOST = kDLCUDAHost
DEVICE_CUDA_MANAGED = kDLCUDAManaged


cdef class Tensor:
    """An owning view of a consumed DLPack capsule: the producer's memory stays alive (and its
    deleter is called once) for as long as this object lives."""
    cdef DLManagedTensor* _legacy
    cdef DLManagedTensorVersioned* _versioned
    cdef readonly object source          # the object the capsule came from (kept alive)
    cdef readonly uintptr_t data         # first element (data + byte_offset)
    cdef readonly tuple shape
    cdef readonly tuple strides          # in elements, C-contiguous strides filled in when absent
    cdef readonly int dtype              # dsquant dtype code, or -1 when unsupported
    cdef readonly str dtype_name
    cdef readonly int itemsize
    cdef readonly int device_type
    cdef readonly int device_id
    cdef readonly bint read_only
    cdef readonly int64_t numel
    cdef bint _contiguous                # known C-contiguous (views made by host_view / host_tensor)

    def __dealloc__(self):
        if self._versioned is not NULL and self._versioned.deleter is not NULL:
            self._versioned.deleter(self._versioned)
        elif self._legacy is not NULL and self._legacy.deleter is not NULL:
            self._legacy.deleter(self._legacy)

    cdef void _describe(self, DLTensor* t):
        cdef int i
        cdef int64_t n = 1
        shape = []
        for i in range(t.ndim):
            shape.append(t.shape[i])
            n *= t.shape[i]
        self.shape = tuple(shape)
        self.numel = n
        if t.strides is NULL:
            self.strides = contiguous_strides(self.shape)
        else:
            self.strides = tuple([t.strides[i] for i in range(t.ndim)])
        self.itemsize = (t.dtype.bits * t.dtype.lanes + 7) // 8
        self.data = <uintptr_t>t.data + <uintptr_t>t.byte_offset
        self.device_type = t.device.device_type
        self.device_id = t.device.device_id
        self.dtype, self.dtype_name = _dtype_of(t.dtype.code, t.dtype.bits, t.dtype.lanes)

    @property
    def is_c_contiguous(self):
        if self._contiguous or self.numel == 0:
            return True              # no element to misplace (producers report any strides, e.g. 0)
        expected = 1
        for extent, stride in zip(reversed(self.shape), reversed(self.strides)):
            if extent != 1 and stride != expected:
                return False
            expected *= extent
        return True

    @property
    def has_overlap_or_reversal(self):
        """True when two indices share memory or an axis runs backwards (zero/negative strides)."""
        if self._contiguous or self.numel == 0:
            return False
        return any(s <= 0 and e > 1 for e, s in zip(self.shape, self.strides))


cdef tuple _contiguous_strides(tuple shape):
    cdef Py_ssize_t i, ndim = len(shape)
    cdef int64_t acc = 1
    if ndim == 1:
        return (1,)
    strides = [1] * ndim
    for i in range(ndim - 1, -1, -1):
        strides[i] = acc
        acc *= <int64_t>shape[i]
    return tuple(strides)


def host_tensor(source, uintptr_t data, tuple shape, int dtype, bint read_only=False):
    """A :class:`Tensor` over C-contiguous host memory at `data` holding `shape` elements of dsquant
    dtype code `dtype`, kept alive by `source` (a framework's array known to be C-contiguous on the
    CPU: the fast intake of interop.operand, which skips the DLPack capsule round trip)."""
    return _host_tensor(source, data, shape, dtype, read_only)


_ITEMSIZES = [d.itemsize for d in sorted(_dtypes.FLOAT_DTYPES, key=lambda d: d.code)]


cdef Tensor _host_tensor(source, uintptr_t data, tuple shape, int dtype, bint read_only):
    cdef Tensor t = Tensor.__new__(Tensor)
    cdef int64_t n = 1
    for extent in shape:
        n *= <int64_t>extent
    t.source = source
    t.data = data
    t.shape = shape
    t.numel = n
    t.strides = _contiguous_strides(shape)
    t.dtype = dtype
    t.dtype_name = DTYPE_NAMES[dtype]
    t.itemsize = _ITEMSIZES[dtype]
    t.device_type = kDLCPU
    t.device_id = 0
    t.read_only = read_only
    t._contiguous = True
    return t


def host_view(obj, int dtype):
    """A :class:`Tensor` over `obj`'s memory when `obj` (a NumPy array whose dtype the caller
    found to be dsquant dtype `dtype`, native byte order) exports a C-contiguous buffer of that
    element size through the buffer protocol, else None. About fifty nanoseconds where DLPack's
    capsule round trip costs microseconds: the buffer's format string is not asked for (NumPy
    builds one on every request), the caller already knows the dtype. `obj` is kept alive by the
    Tensor (as NumPy's own frombuffer does, the buffer is released at once)."""
    cdef Py_buffer view
    cdef Py_ssize_t i, expected
    cdef bint contiguous = True
    cdef int itemsize = _ITEMSIZES[dtype]
    try:
        PyObject_GetBuffer(obj, &view, PyBUF_STRIDES)
    except (BufferError, TypeError, ValueError, NotImplementedError):
        return None
    try:
        if view.itemsize != itemsize:
            return None
        expected = view.itemsize
        for i in range(view.ndim - 1, -1, -1):
            if view.shape[i] != 1 and view.strides[i] != expected:
                contiguous = False
            expected *= view.shape[i]
        if not contiguous and expected != 0:      # (an empty array has no element to misplace)
            return None
        shape = tuple([view.shape[i] for i in range(view.ndim)])
        return _host_tensor(obj, <uintptr_t>view.buf, shape, dtype, view.readonly)
    finally:
        PyBuffer_Release(&view)


def contiguous_strides(shape):
    strides = []
    acc = 1
    for extent in reversed(shape):
        strides.append(acc)
        acc *= extent
    return tuple(reversed(strides))


def consume(obj, stream=None, tuple relabel=None):
    """Take `obj` through ``__dlpack__`` and return a :class:`Tensor` owning the result.

    ``relabel``, a DLPack ``(code, bits)`` pair, replaces the element type with one of the same
    size (NumPy cannot export ml_dtypes bfloat16 or float8 through DLPack, so such arrays arrive
    as unsigned integer views)."""
    kwargs = {} if stream is None else {"stream": stream}
    try:
        capsule = obj.__dlpack__(max_version=(1, 0), **kwargs)
    except TypeError:
        capsule = obj.__dlpack__(**kwargs)   # a producer that predates DLPack 1.0
    cdef Tensor t = Tensor.__new__(Tensor)
    t.source = obj
    cdef DLManagedTensorVersioned* v
    cdef DLManagedTensor* m
    if PyCapsule_IsValid(capsule, b"dltensor_versioned"):
        v = <DLManagedTensorVersioned*>PyCapsule_GetPointer(capsule, b"dltensor_versioned")
        if v.version.major > 1:
            raise BufferError(f"DLPack version {v.version.major}.{v.version.minor} of "
                              f"{type(obj).__name__} is newer than dsquant understands (1.x)")
        PyCapsule_SetName(capsule, b"used_dltensor_versioned")
        t._versioned = v
        t.read_only = (v.flags & DLPACK_FLAG_BITMASK_READ_ONLY) != 0
        t._describe(&v.dl_tensor)
    elif PyCapsule_IsValid(capsule, b"dltensor"):
        m = <DLManagedTensor*>PyCapsule_GetPointer(capsule, b"dltensor")
        PyCapsule_SetName(capsule, b"used_dltensor")
        t._legacy = m
        t.read_only = False
        t._describe(&m.dl_tensor)
    else:
        raise BufferError(f"{type(obj).__name__}.__dlpack__() returned {capsule!r}, not a DLPack capsule")
    if relabel is not None:
        code, name = _dtype_of(relabel[0], relabel[1], 1)
        if t.itemsize * 8 != relabel[1]:
            raise BufferError(f"cannot view {t.dtype_name} elements as {name}")
        t.dtype, t.dtype_name = code, name
    return t


# ---------------------------------------------------------------------------------------- export
cdef struct ExportCtx:
    void* data
    size_t capacity
    int64_t shape[32]
    int64_t strides[32]


cdef void _free_legacy(DLManagedTensor* m) noexcept nogil:
    cdef ExportCtx* ctx = <ExportCtx*>m.manager_ctx
    buffer_release(ctx.data, ctx.capacity)
    free(ctx)
    free(m)


cdef void _free_versioned(DLManagedTensorVersioned* m) noexcept nogil:
    cdef ExportCtx* ctx = <ExportCtx*>m.manager_ctx
    buffer_release(ctx.data, ctx.capacity)
    free(ctx)
    free(m)


cdef void _capsule_destructor_legacy(object capsule) noexcept:
    # an unconsumed capsule still owns its tensor
    if PyCapsule_IsValid(capsule, b"dltensor"):
        m = <DLManagedTensor*>PyCapsule_GetPointer(capsule, b"dltensor")
        m.deleter(m)


cdef void _capsule_destructor_versioned(object capsule) noexcept:
    if PyCapsule_IsValid(capsule, b"dltensor_versioned"):
        v = <DLManagedTensorVersioned*>PyCapsule_GetPointer(capsule, b"dltensor_versioned")
        v.deleter(v)


cdef char* _BYTE_FORMAT = b"B"


cdef void _span(Tensor t, int64_t* lo, int64_t* hi):
    cdef int64_t step
    lo[0] = hi[0] = <int64_t>t.data
    if t.numel == 0:
        return
    for extent, stride in zip(t.shape, t.strides):
        step = (<int64_t>extent - 1) * <int64_t>stride * t.itemsize
        if step < 0:
            lo[0] += step
        else:
            hi[0] += step
    hi[0] += t.itemsize


def byte_span(Tensor t):
    """[first, last) byte address any element of `t` occupies."""
    cdef int64_t lo, hi
    _span(t, &lo, &hi)
    return lo, hi


def overlap(Tensor a, Tensor b):
    """How the memory of `a` and `b` relates: 0 when they share no byte (or live on different
    devices), 1 when they are exactly the same view, 2 when their byte ranges overlap otherwise."""
    cdef int64_t lo_a, hi_a, lo_b, hi_b
    if a.device_type != b.device_type or a.device_id != b.device_id:
        return 0
    _span(a, &lo_a, &hi_a)
    _span(b, &lo_b, &hi_b)
    if not (lo_a < hi_b and lo_b < hi_a):
        return 0
    if a.data == b.data and a.itemsize == b.itemsize and a.shape == b.shape and a.strides == b.strides:
        return 1
    return 2


cdef class HostBuffer:
    """A 64-byte-aligned, C-contiguous host array owned by dsquant until it is exported once
    through ``__dlpack__`` (then the consumer owns it and frees it through the deleter), or shared
    through the buffer protocol (then it owns its memory until it is itself freed; NumPy and
    torch arrays made with ``frombuffer`` keep it alive). Memory comes from dsq_buffers.h: large
    buffers are recycled through a bounded cache once their last owner frees them.

    ``dtype`` is a dsquant dtype code, or a DLPack ``(code, bits)`` pair such as :data:`DL_INT8`."""
    cdef void* _data
    cdef size_t _capacity
    cdef bint _shared                   # exported through the buffer protocol: never through DLPack
    cdef readonly uintptr_t data
    cdef readonly tuple shape
    cdef readonly int64_t nbytes
    cdef uint8_t _code
    cdef uint8_t _bits

    def __cinit__(self, shape, dtype, bint as_uint=False):
        if len(shape) > 32:
            raise ValueError(f"arrays of more than 32 dimensions are not supported (got {len(shape)})")
        self.shape = tuple(shape) if type(shape) is tuple else tuple(int(s) for s in shape)
        code, bits = dtype if isinstance(dtype, tuple) else _DL_OF_DTYPE[dtype]
        self._code = kDLUInt if as_uint else code
        self._bits = bits
        cdef int64_t n = 1
        for s in self.shape:
            n *= s
        self.nbytes = n * (bits // 8)
        self._data = buffer_allocate(<size_t>self.nbytes, &self._capacity)
        if self._data is NULL:
            raise MemoryError(f"could not allocate {self.nbytes} bytes for the result")
        self.data = <uintptr_t>self._data

    def __dealloc__(self):
        if self._data is not NULL:
            buffer_release(self._data, self._capacity)

    def __getbuffer__(self, Py_buffer* view, int flags):
        # flat bytes: consumers (numpy.frombuffer, torch.frombuffer) give the dtype themselves
        if self._data is NULL:
            raise BufferError("this dsquant result buffer was already exported through DLPack")
        view.buf = self._data
        view.obj = self
        view.len = self.nbytes
        view.readonly = 0
        view.itemsize = 1
        view.format = _BYTE_FORMAT if flags & PyBUF_FORMAT else NULL
        view.ndim = 1
        view.shape = &view.len if flags & PyBUF_ND else NULL
        view.strides = &view.itemsize if flags & PyBUF_STRIDES else NULL
        view.suboffsets = NULL
        view.internal = NULL
        self._shared = True

    def __releasebuffer__(self, Py_buffer* view):
        pass          # the memory stays with this object until it is freed

    def as_numpy(self, cnp.dtype dtype):
        """This buffer as a writable C-contiguous NumPy array of `dtype` and the buffer's shape,
        which keeps the buffer alive (its base): what ``numpy.frombuffer`` and a reshape give,
        without their argument parsing. Like them it shares the memory, so the buffer can no longer
        be handed over through DLPack."""
        cdef cnp.npy_intp dims[32]
        cdef int i, ndim = len(self.shape)
        cdef int64_t n = 1
        if self._data is NULL:
            raise BufferError("this dsquant result buffer was already exported through DLPack")
        for i in range(ndim):
            dims[i] = self.shape[i]
            n *= dims[i]
        if n * dtype.itemsize != self.nbytes:
            raise ValueError(f"a {self.nbytes}-byte buffer of shape {self.shape} cannot hold {dtype} elements")
        Py_INCREF(dtype)                # PyArray_NewFromDescr steals a reference to the dtype
        arr = PyArray_NewFromDescr(cnp.ndarray, dtype, ndim, dims, NULL, self._data, cnp.NPY_ARRAY_CARRAY, None)
        cnp.set_array_base(arr, self)
        self._shared = True
        return arr

    def __dlpack_device__(self):
        return (kDLCPU, 0)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        if self._data is NULL:
            raise BufferError("this dsquant result buffer was already exported")
        if self._shared:
            raise BufferError("this dsquant result buffer is shared through the buffer protocol; "
                              "it cannot be handed over through DLPack as well")
        if dl_device is not None and tuple(dl_device) != (kDLCPU, 0):
            raise BufferError(f"dsquant host buffers live on the CPU, not on device {dl_device}")
        if copy:
            raise BufferError("dsquant exports its result buffers without copying (copy=True refused)")
        cdef ExportCtx* ctx = <ExportCtx*>malloc(sizeof(ExportCtx))
        if ctx is NULL:
            raise MemoryError()
        memset(ctx, 0, sizeof(ExportCtx))
        ctx.data = self._data
        ctx.capacity = self._capacity
        for i, (s, st) in enumerate(zip(self.shape, contiguous_strides(self.shape))):
            ctx.shape[i] = s
            ctx.strides[i] = st
        cdef DLTensor* t
        cdef DLManagedTensorVersioned* v
        cdef DLManagedTensor* m
        if max_version is not None and max_version[0] >= 1:
            v = <DLManagedTensorVersioned*>malloc(sizeof(DLManagedTensorVersioned))
            if v is NULL:
                free(ctx)
                raise MemoryError()
            memset(v, 0, sizeof(DLManagedTensorVersioned))
            v.version.major = 1
            v.version.minor = 0
            v.manager_ctx = ctx
            v.deleter = _free_versioned
            t = &v.dl_tensor
            capsule = PyCapsule_New(v, b"dltensor_versioned", _capsule_destructor_versioned)
        else:
            m = <DLManagedTensor*>malloc(sizeof(DLManagedTensor))
            if m is NULL:
                free(ctx)
                raise MemoryError()
            memset(m, 0, sizeof(DLManagedTensor))
            m.manager_ctx = ctx
            m.deleter = _free_legacy
            t = &m.dl_tensor
            capsule = PyCapsule_New(m, b"dltensor", _capsule_destructor_legacy)
        t.data = self._data
        t.device.device_type = kDLCPU
        t.device.device_id = 0
        t.ndim = len(self.shape)
        t.dtype.code = self._code
        t.dtype.bits = self._bits
        t.dtype.lanes = 1
        t.shape = ctx.shape
        t.strides = ctx.strides
        t.byte_offset = 0
        self._data = NULL       # the capsule owns the memory now
        return capsule


# ------------------------------------------------------------------------------ relabelled export
cdef class Relabeled:
    """Exports another producer's DLPack tensor with its element type replaced by a dsquant dtype
    of the same size: how bfloat16 results held in a CuPy uint16 array (CuPy has no bfloat16)
    reach torch and JAX without a copy. Every ``__dlpack__`` argument goes to the producer."""
    cdef readonly object producer
    cdef readonly int dtype

    def __init__(self, producer, int dtype):
        self.producer = producer
        self.dtype = dtype

    def __dlpack_device__(self):
        return self.producer.__dlpack_device__()

    def __dlpack__(self, **kwargs):
        capsule = self.producer.__dlpack__(**kwargs)
        cdef DLTensor* t
        if PyCapsule_IsValid(capsule, b"dltensor_versioned"):
            t = &(<DLManagedTensorVersioned*>PyCapsule_GetPointer(capsule, b"dltensor_versioned")).dl_tensor
        elif PyCapsule_IsValid(capsule, b"dltensor"):
            t = &(<DLManagedTensor*>PyCapsule_GetPointer(capsule, b"dltensor")).dl_tensor
        else:
            raise BufferError(f"{type(self.producer).__name__}.__dlpack__() returned {capsule!r}, not a DLPack capsule")
        code, bits = _DL_OF_DTYPE[self.dtype]
        if t.dtype.bits != bits or t.dtype.lanes != 1:
            raise BufferError(f"cannot relabel {t.dtype.bits}-bit elements as {DTYPE_NAMES[self.dtype]}")
        t.dtype.code = code
        return capsule
