# cython: language_level=3, boundscheck=False, wraparound=False
"""DLPack consumer (an owning view of any array) and exporter (library-owned output buffers).

Consumption follows the DLPack rules: ask for ``max_version=(1, 0)`` and fall back to the legacy
protocol, accept both capsule names, rename a consumed capsule to ``used_...``, call the producer's
deleter exactly once (with the GIL), reject a newer major version.
"""
from cpython.pycapsule cimport (PyCapsule_GetPointer, PyCapsule_IsValid, PyCapsule_New,
                                PyCapsule_SetName)
from libc.stdint cimport int64_t, uint64_t, uintptr_t, uint8_t, int32_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset

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

cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void** memptr, size_t alignment, size_t size)


cdef void* aligned_buffer(size_t nbytes) noexcept nogil:
    """64-byte-aligned memory for a result (at least one line, so empty results have an address)."""
    cdef void* p = NULL
    if posix_memalign(&p, 64, nbytes if nbytes else 64) != 0:
        return NULL
    return p


from dsquant.core import dtypes as _dtypes

# dsquant's dtype codes (dsq::DType) by DLPack (code, bits): read from the one dtype table.
_DTYPES = {d.dlpack: (d.code, d.name) for d in _dtypes.FLOAT_DTYPES}
DTYPE_NAMES = _dtypes.NAMES
_DL_OF_DTYPE = {d.code: d.dlpack for d in _dtypes.FLOAT_DTYPES}
_DL_CODE_NAMES = {0: "int", 1: "uint", 2: "float", 3: "opaque", 4: "bfloat", 5: "complex", 6: "bool"}

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
        key = (t.dtype.code, t.dtype.bits)
        if t.dtype.lanes == 1 and key in _DTYPES:
            self.dtype, self.dtype_name = _DTYPES[key]
        else:
            self.dtype = -1
            self.dtype_name = f"{_DL_CODE_NAMES.get(t.dtype.code, t.dtype.code)}{t.dtype.bits}"
            if t.dtype.lanes != 1:
                self.dtype_name += f"x{t.dtype.lanes}"

    @property
    def is_c_contiguous(self):
        if self.numel == 0:
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
        if self.numel == 0:
            return False
        return any(s <= 0 and e > 1 for e, s in zip(self.shape, self.strides))


def contiguous_strides(shape):
    strides = []
    acc = 1
    for extent in reversed(shape):
        strides.append(acc)
        acc *= extent
    return tuple(reversed(strides))


def consume(obj, stream=None, int as_dtype=-1):
    """Take `obj` through ``__dlpack__`` and return a :class:`Tensor` owning the result.

    ``as_dtype`` relabels the elements with a dsquant dtype code of the same size (NumPy cannot
    export ml_dtypes bfloat16 through DLPack, so such arrays arrive as uint16 views)."""
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
    if as_dtype >= 0:
        if t.itemsize != _dtypes.FLOAT_DTYPES[as_dtype].itemsize:
            raise BufferError(f"cannot view {t.dtype_name} elements as {DTYPE_NAMES[as_dtype]}")
        t.dtype = as_dtype
        t.dtype_name = DTYPE_NAMES[as_dtype]
    return t


# ---------------------------------------------------------------------------------------- export
cdef struct ExportCtx:
    void* data
    int64_t shape[32]
    int64_t strides[32]


cdef void _free_legacy(DLManagedTensor* m) noexcept nogil:
    cdef ExportCtx* ctx = <ExportCtx*>m.manager_ctx
    free(ctx.data)
    free(ctx)
    free(m)


cdef void _free_versioned(DLManagedTensorVersioned* m) noexcept nogil:
    cdef ExportCtx* ctx = <ExportCtx*>m.manager_ctx
    free(ctx.data)
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


cdef class HostBuffer:
    """A 64-byte-aligned, C-contiguous host array owned by dsquant until it is exported once
    through ``__dlpack__`` (then the consumer owns it and frees it through the deleter).

    ``dtype`` is a dsquant dtype code, or a DLPack ``(code, bits)`` pair such as :data:`DL_INT8`."""
    cdef void* _data
    cdef readonly uintptr_t data
    cdef readonly tuple shape
    cdef readonly int64_t nbytes
    cdef uint8_t _code
    cdef uint8_t _bits

    def __cinit__(self, shape, dtype, bint as_uint=False):
        if len(shape) > 32:
            raise ValueError(f"arrays of more than 32 dimensions are not supported (got {len(shape)})")
        self.shape = tuple(int(s) for s in shape)
        code, bits = dtype if isinstance(dtype, tuple) else _DL_OF_DTYPE[dtype]
        self._code = kDLUInt if as_uint else code
        self._bits = bits
        n = 1
        for s in self.shape:
            n *= s
        self.nbytes = n * (bits // 8)
        self._data = aligned_buffer(<size_t>self.nbytes)
        if self._data is NULL:
            raise MemoryError(f"could not allocate {self.nbytes} bytes for the result")
        self.data = <uintptr_t>self._data

    def __dealloc__(self):
        if self._data is not NULL:
            free(self._data)

    def __dlpack_device__(self):
        return (kDLCPU, 0)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        if self._data is NULL:
            raise BufferError("this dsquant result buffer was already exported")
        if dl_device is not None and tuple(dl_device) != (kDLCPU, 0):
            raise BufferError(f"dsquant host buffers live on the CPU, not on device {dl_device}")
        if copy:
            raise BufferError("dsquant exports its result buffers without copying (copy=True refused)")
        cdef ExportCtx* ctx = <ExportCtx*>malloc(sizeof(ExportCtx))
        if ctx is NULL:
            raise MemoryError()
        memset(ctx, 0, sizeof(ExportCtx))
        ctx.data = self._data
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
