"""Result buffers (dsquant/interop/dsq_buffers.h): large results are recycled through a bounded
cache. A cached buffer must never be handed out while any result (or a view of one, or a
framework's array made from one) still references it, and allocating and freeing many results
must not grow the process without bound. Correctness only: no timing here."""
import os
import subprocess
import sys

import numpy as np
import pytest

import dsquant
from dsquant.interop import _array
from reference import fake_quantize as fake_ref
from reference_int import codes_ref, pack_ref

MIB = 1 << 20
BIG = 2 * MIB // 4            # float32 elements of a 2 MiB array: above the cache threshold


@pytest.fixture
def cache_limit():
    """Set the cache limit for one test (bytes), restore the default after it (cache emptied)."""
    before = _array.buffer_cache_info()["limit"]
    yield _array.set_buffer_cache_limit
    _array.set_buffer_cache_limit(before)


def _input(n, seed=0):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_large_results_are_recycled(cache_limit):
    cache_limit(64 * MIB)
    x = _input(BIG)
    first = dsquant.fake_quantize(x, 4)
    address = first.ctypes.data
    del first                                      # the last reference: the buffer goes to the cache
    info = _array.buffer_cache_info()
    assert info["buffers"] == 1 and info["held"] >= x.nbytes
    again = dsquant.fake_quantize(x, 4)
    assert again.ctypes.data == address            # the same pages again
    assert _array.buffer_cache_info()["buffers"] == 0
    np.testing.assert_array_equal(again, fake_ref(x, 4, 8))


@pytest.mark.parametrize("keep", ["view", "itself", "torch", "dlpack"])
def test_a_referenced_buffer_is_never_reused(cache_limit, keep):
    cache_limit(64 * MIB)
    x = _input(BIG)
    result = dsquant.fake_quantize(x, 8)
    expected = fake_ref(x, 8, 8)
    if keep == "view":
        held = result[1::3]
        expected = expected[1::3]
    elif keep == "itself":
        held = result
    elif keep == "torch":
        torch = pytest.importorskip("torch")
        held = torch.from_numpy(result)
    else:
        torch = pytest.importorskip("torch")
        held = torch.from_dlpack(result)
    del result
    others = [dsquant.fake_quantize(_input(BIG, seed), 8) for seed in range(1, 5)]
    held_np = np.asarray(held)
    for other in others:
        assert not np.shares_memory(held_np, other)
        other[...] = 123.0                         # writes into the others never reach `held`
    np.testing.assert_array_equal(held_np, expected)


def test_torch_results_are_recycled_only_when_freed(cache_limit):
    torch = pytest.importorskip("torch")
    cache_limit(64 * MIB)
    x = torch.from_numpy(_input(BIG))
    a = dsquant.fake_quantize(x, 2)
    tail = a[BIG // 2:]
    del a
    b = dsquant.fake_quantize(x * 2, 2)
    assert tail.data_ptr() != b.data_ptr() and not np.shares_memory(tail.numpy(), b.numpy())
    np.testing.assert_array_equal(tail.numpy(), fake_ref(x.numpy(), 2, 8)[BIG // 2:])


def test_live_results_each_keep_their_own_memory(cache_limit):
    cache_limit(64 * MIB)
    results, copies = [], []
    for seed in range(12):
        x = _input(BIG + seed * 1024, seed)        # sizes in one class and in neighbouring ones
        results.append(dsquant.fake_quantize(x))
        copies.append(fake_ref(x, 1, 8))
        if seed % 3 == 0:
            results.pop(0)                         # some freed on the way: they are reused
            copies.pop(0)
    spans = sorted((r.ctypes.data, r.ctypes.data + r.nbytes) for r in results)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))
    for r, c in zip(results, copies):
        np.testing.assert_array_equal(r, c)


def test_quantize_results_and_out(cache_limit):
    """Integer results come from the same cache (codes: int8; params: float32)."""
    cache_limit(64 * MIB)
    x = _input(4 * BIG)
    groups = x.size // 128
    q, p = dsquant.quantize(x, groups, 8)
    codes, params = codes_ref(x, groups, 8, True)
    np.testing.assert_array_equal(q.view(np.uint8), pack_ref(codes, 8))
    np.testing.assert_array_equal(p, params)
    saved = q.copy()
    view = q[::2]
    del q
    q2, _ = dsquant.quantize(x[::-1].copy(), groups, 8)
    assert not np.shares_memory(view, q2)
    np.testing.assert_array_equal(view, saved[::2])


def test_memory_stays_bounded(cache_limit):
    """Many results of varying sizes, allocated and dropped: the process grows by at most the
    cache limit plus the live results, and gives the cache back when asked."""
    limit = 32 * MIB
    cache_limit(limit)
    x = _input(8 * MIB // 4)                      # inputs are slices of one array: no new input memory
    rng = np.random.default_rng(1)
    sizes = rng.integers(MIB // 4, 8 * MIB // 4, size=80)
    dsquant.fake_quantize(x[:sizes[0]])           # load everything lazily loaded before measuring
    baseline = _rss()
    peak = 0
    for n in sizes:
        y = dsquant.fake_quantize(x[:n])
        z = dsquant.quantize(x[:n], 1, 8)
        del y, z
        peak = max(peak, _rss() - baseline)
        info = _array.buffer_cache_info()
        assert info["held"] <= limit and info["buffers"] <= 16
    # cache limit + two live results of at most 8 MiB (values, codes) + headroom for the allocator
    assert peak <= limit + 16 * MIB + 16 * MIB, peak / MIB
    released = _array.set_buffer_cache_limit(limit)
    assert _array.buffer_cache_info()["held"] == 0
    assert _rss() - baseline <= 16 * MIB or released == 0


def test_a_cache_of_zero_keeps_nothing(cache_limit):
    cache_limit(0)
    x = _input(BIG)
    for _ in range(3):
        dsquant.fake_quantize(x)
    info = _array.buffer_cache_info()
    assert info["held"] == 0 and info["buffers"] == 0


def test_environment_sets_the_limit():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = "from dsquant.interop import _array; print(_array.buffer_cache_info()['limit'])"

    def run(value):
        return subprocess.run([sys.executable, "-c", code], env={**os.environ, "DSQUANT_BUFFER_CACHE_MB": value},
                              capture_output=True, text=True, cwd=root)
    assert run("8").stdout.strip() == str(8 * MIB)
    assert run("0").stdout.strip() == "0"
    bad = run("lots")
    assert bad.returncode != 0 and "DSQUANT_BUFFER_CACHE_MB must be a number of MiB" in bad.stderr


def test_small_results_are_not_cached(cache_limit):
    cache_limit(64 * MIB)
    before = _array.buffer_cache_info()
    for _ in range(5):
        dsquant.fake_quantize(_input(1024))
    after = _array.buffer_cache_info()
    assert (after["hits"], after["misses"], after["buffers"]) == (before["hits"], before["misses"], 0)


_FORK_CHILD = """
import os
import numpy as np
import dsquant
from dsquant.interop import _array
x = np.random.default_rng(0).standard_normal(1 << 19).astype(np.float32)
expected = dsquant.fake_quantize(x).copy()     # its buffer goes to the cache, inherited by the child
assert _array.buffer_cache_info()["buffers"] == 1
pid = os.fork()
if pid == 0:
    ok = False
    try:
        ok = bool((dsquant.fake_quantize(x) == expected).all()) and _array.buffer_cache_info()["hits"] >= 1
    finally:
        os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
raise SystemExit(os.WEXITSTATUS(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_cache_works_in_a_forked_child():
    """In a fresh process (no JAX threads to warn about fork): the child reuses the inherited cache."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", _FORK_CHILD], capture_output=True, text=True, cwd=root,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_a_buffer_as_numpy_shares_and_keeps_its_memory():
    """HostBuffer.as_numpy (how NumPy and torch results are made): a writable C-contiguous view of
    the buffer's memory that keeps the buffer alive; the buffer can then no longer go out through
    DLPack (two owners), and a dtype that does not fill the buffer exactly is refused."""
    buf = _array.HostBuffer((3, 5), 2)                          # float32
    arr = buf.as_numpy(np.dtype(np.float32))
    assert arr.shape == (3, 5) and arr.dtype == np.float32 and arr.flags.c_contiguous and arr.flags.writeable
    assert arr.ctypes.data == buf.data and arr.base is buf
    with pytest.raises(BufferError, match="shared"):
        buf.__dlpack__()
    arr[...] = np.arange(15, dtype=np.float32).reshape(3, 5)
    again = np.frombuffer(buf, np.float32)                      # the same bytes, read another way
    assert np.array_equal(again, np.arange(15, dtype=np.float32))
    with pytest.raises(ValueError, match="cannot hold"):
        _array.HostBuffer((4,), 2).as_numpy(np.dtype(np.float64))
    del buf, again
    assert arr.sum() == 105                                     # still alive through arr.base


def test_host_view_takes_only_contiguous_arrays_of_the_given_element_size():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = _array.host_view(x, dsquant.core.dtypes.FLOAT32.code)
    assert (t.data, t.shape, t.strides, t.itemsize, t.read_only) == (x.ctypes.data, (3, 4), (4, 1), 4, False)
    assert _array.host_view(x[:, ::2], dsquant.core.dtypes.FLOAT32.code) is None        # not contiguous
    assert _array.host_view(x, dsquant.core.dtypes.FLOAT16.code) is None               # 4-byte elements
    x.flags.writeable = False
    assert _array.host_view(x, dsquant.core.dtypes.FLOAT32.code).read_only


def test_overlap_of_views():
    x = np.zeros(64, np.float32)
    code = dsquant.core.dtypes.FLOAT32.code
    a, b = _array.host_view(x[:32], code), _array.host_view(x[32:], code)
    assert _array.overlap(a, b) == 0
    assert _array.overlap(a, _array.host_view(x[:32], code)) == 1
    assert _array.overlap(a, _array.host_view(x[16:48], code)) == 2
    assert _array.byte_span(a) == (x.ctypes.data, x.ctypes.data + 128)
    empty = _array.host_view(x[5:5], code)
    assert _array.overlap(a, empty) == 0
