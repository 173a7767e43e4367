"""The parts of the CUDA backend that run without a GPU: launch plans, the relabelled DLPack
export used for bfloat16 results, and the error a GPU array gets when CuPy is missing."""
import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch

import dsquant
from dsquant.backends.cuda import kernels as _kernels
from dsquant.backends.cuda import launch as _launch
from dsquant.interop import _array
from _fake_cupy import claim_cuda
from _optional import require

jax = require("jax")

HAVE_CUPY = importlib.util.find_spec("cupy") is not None


# ------------------------------------------------------------------------------ launch plans
@pytest.mark.parametrize("dtype", range(4))
@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 8, 9, 31, 33, 100, 128, 1000, 1023, 4096, 4097, 8192, 8193, 10**6])
def test_resident_plan_holds_each_group(dtype, size):
    n_unit = _kernels.UNIT_ELEMENTS[dtype]
    groups = 5
    plan = _launch.fake_quantize(dtype, 0x1000, 0x2000, size * groups, groups, 8, True, False, 0, 0, keys=0x3000)
    shape = _launch.resident_shape(dtype, size)
    if shape is None:
        assert [p.kernel.split("<")[0] for p in plan] == ["dsq::stats_clear", "dsq::stats_chunks", "dsq::fake_chunks"]
        assert size > _launch.MAX_THREADS * 4 * n_unit
        assert _launch.keys_nbytes(dtype, size * groups, groups) == 3 * groups * _kernels.KEY_BYTES[dtype]
        return
    (launch,) = plan
    per_thread, team = shape
    assert launch.kernel == _kernels.fake_resident(dtype, True, False, per_thread)
    assert team & (team - 1) == 0 and 1 <= team <= _launch.MAX_THREADS
    assert team * per_thread * n_unit >= size                     # the group fits
    assert (team // 2) * per_thread * n_unit < size or team == 1  # and the team is the smallest that fits
    assert launch.block == (team if team > 32 else _launch.MAX_THREADS)
    assert launch.block % 32 == 0 and launch.block <= _launch.MAX_THREADS
    assert launch.grid * (launch.block // team) >= groups
    assert _launch.keys_nbytes(dtype, size * groups, groups) == 0


def test_plan_of_nothing_is_empty():
    assert _launch.fake_quantize(2, 0, 0, 0, 3, 8, True, True, 0, 0) == []


def test_chunked_plan_needs_scratch():
    with pytest.raises(ValueError, match="scratch"):
        _launch.fake_quantize(2, 0x1000, 0x2000, 1 << 20, 1, 8, True, False, 0, 0)


def test_grids_are_capped():
    plan = _launch.fake_quantize(0, 0x1000, 0x2000, 8 << 30, 1 << 30, 8, True, False, 0, 0)
    assert plan[0].grid == _launch.MAX_GRID
    plan = _launch.fake_quantize(0, 0x1000, 0x2000, 1 << 40, 1, 8, True, False, 0, 0, keys=0x3000, max_grid=7)
    assert [p.grid for p in plan] == [1, 7, 7]


def test_kernel_scalars_are_numpy_types():
    """CuPy passes a Python int as int64 and a float as double: every argument is typed."""
    plans = (_launch.fake_quantize(1, 0x1000, 0x2000, 1 << 20, 4, 8, False, True, 1, 2, keys=0x3000)
             + _launch.fake_quantize(1, 0x1000, 0x2000, 1 << 10, 4, 8, False, True, 1, 2))
    for launch in plans:
        assert all(type(a) in (np.uint64, np.int64, np.int32) for a in launch.args), launch


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 13, 128, 4096, 8192, 8193, 70001])
@pytest.mark.parametrize("dtype", range(4))
def test_quantize_plan(dtype, size, bits):
    """The fake-quantization regimes (resident team or chunks), then a seam pass exactly when a
    group boundary falls inside a code byte, with statistics scratch exactly when a pass needs it."""
    per = 8 // bits if 8 % bits == 0 else 1
    groups = 4
    plan = _launch.quantize(dtype, 0x1000, 0x2000, 0x3000, size * groups, groups, bits, False, keys=0x4000)
    kernels = [p.kernel.split("<")[0] for p in plan]
    seams = size % per != 0
    resident = _launch.resident_shape(dtype, size)
    if resident is None:
        assert kernels[:3] == ["dsq::stats_clear", "dsq::stats_chunks", "dsq::int_quant_chunks"]
        assert [p.grid for p in plan[1:3]] == [groups * -(-size // _launch._chunk(dtype))] * 2
    else:
        assert plan[0].kernel == _kernels.int_quant_resident(dtype, False, per, resident[0])
        assert int(plan[0].args[6]) == resident[1]                      # the team of fake_resident
        assert int(plan[0].args[3]) == (0x4000 if seams else 0)          # keys only for the seam pass
    assert kernels[1 if resident else 3:] == (["dsq::int_quant_seams"] if seams else [])
    assert bool(_launch.int_keys_nbytes(dtype, size * groups, groups, bits)) == (resident is None or seams)
    if _launch.int_keys_nbytes(dtype, size * groups, groups, bits):
        assert _launch.int_keys_nbytes(dtype, size * groups, groups, bits) == 3 * groups * _kernels.KEY_BYTES[dtype]
        with pytest.raises(ValueError, match="scratch"):
            _launch.quantize(dtype, 0x1000, 0x2000, 0x3000, size * groups, groups, bits, False)


def test_one_group_has_no_seams():
    assert [p.kernel.split("<")[0] for p in _launch.quantize(0, 0x1000, 0x2000, 0x3000, 6, 1, 3, True)] == [
        "dsq::int_quant_resident"]
    assert _launch.int_keys_nbytes(0, 6, 1, 3) == 0


@pytest.mark.parametrize("size", [1, 3, 128, 4096, 8192, 8193, 10**6])
@pytest.mark.parametrize("dtype", range(4))
def test_dequantize_plan_covers_every_group(dtype, size):
    groups = 3
    (launch,) = _launch.dequantize(dtype, 0x1000, 0x2000, 0x3000, size * groups, groups, 4, True)
    assert launch.kernel == _kernels.dequant_signed(dtype, True, 2)
    chunk, team = int(launch.args[6]), int(launch.args[7])
    resident = _launch.resident_shape(dtype, size)
    assert (chunk, team) == ((size, resident[1]) if resident else (_launch._chunk(dtype), _launch.MAX_THREADS))
    assert launch.block % team == 0 and launch.block % 32 == 0 and launch.block <= _launch.MAX_THREADS
    assert launch.grid * (launch.block // team) >= groups * -(-size // chunk)
    (half,) = _launch.dequantize_unsigned_half(0x1000, 0x2000, 0x3000, 0x4000, groups, size * 2, 4)
    assert half.kernel == _kernels.dequant_unsigned_half(2) and int(half.args[4]) == size * 2


def test_integer_grids_are_capped():
    for plan in (_launch.quantize(0, 0x1000, 0x2000, 0x3000, 8 << 30, 1 << 30, 8, True),
                 _launch.dequantize(0, 0x1000, 0x2000, 0x3000, 8 << 30, 1 << 30, 8, True)):
        assert plan[0].grid == _launch.MAX_GRID
    plan = _launch.quantize(0, 0x1000, 0x2000, 0x3000, 3 << 30, 3, 4, True, keys=0x4000, max_grid=7)
    assert [p.grid for p in plan] == [1, 7, 7]


# ------------------------------------------------------------------------------ bfloat16 results
def test_relabeled_export_reaches_torch_and_jax_without_copy():
    bits = np.array([0x3F80, 0xC000, 0x7FC1, 0x0001], np.uint16)
    t = torch.from_dlpack(_array.Relabeled(bits, 1))
    assert t.dtype == torch.bfloat16 and t.data_ptr() == bits.ctypes.data
    assert t.view(torch.int16).numpy().view(np.uint16).tolist() == bits.tolist()
    j = jax.dlpack.from_dlpack(_array.Relabeled(bits.copy(), 1))
    assert j.dtype == jax.numpy.bfloat16
    assert np.asarray(j).view(np.uint16).tolist() == bits.tolist()
    assert np.asarray(j).astype(np.float32)[:2].tolist() == [1.0, -2.0]


def test_relabeled_export_refuses_another_element_size():
    with pytest.raises(BufferError, match="8-bit elements as bfloat16"):
        torch.from_dlpack(_array.Relabeled(np.zeros(4, np.uint8), 1))


# ------------------------------------------------------------------------------ without CuPy
class _ClaimsCuda:
    """A DLPack producer whose tensor says it lives on CUDA device 0 (NumPy memory underneath,
    never touched: the backend must fail before reading it)."""

    def __init__(self, array):
        self.array = array

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, *, stream=None, max_version=None, **kwargs):
        versioned = max_version is not None and max_version[0] >= 1
        capsule = self.array.__dlpack__(max_version=max_version) if versioned else self.array.__dlpack__()
        return claim_cuda(capsule, versioned)


@pytest.mark.skipif(HAVE_CUPY, reason="CuPy is installed here")
def test_gpu_array_without_cupy_says_what_to_install():
    with pytest.raises(ImportError, match=r'pip install "\.\[cuda13\]"'):
        dsquant.fake_quantize(_ClaimsCuda(np.ones(8, np.float32)), 2, 8)
    with pytest.raises(ImportError, match=r'"\.\[cuda12\]"'):
        dsquant.ds_quantizer(_ClaimsCuda(np.ones(8, np.float32)), 2, 8)


@pytest.mark.skipif(HAVE_CUPY, reason="CuPy is installed here")
def test_cuda_backend_import_error_names_the_extras():
    code = "import dsquant.backends.cuda.device"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert 'pip install ".[cuda13]"' in result.stderr and '".[cuda12]"' in result.stderr


def test_info_reports_no_cuda_without_a_gpu():
    if HAVE_CUPY:
        pytest.skip("CuPy is installed here")
    assert dsquant.info()["backends"]["cuda"] is False


# ------------------------------------------------------------------------------ JAX's consumer stream
def test_jax_inputs_name_the_stream_jax_gives_consumers():
    """As jax.dlpack.from_dlpack does: the device's stream for external ready events, None where
    JAX has none (its CPU devices answer UNIMPLEMENTED)."""
    from dsquant.interop import adapters

    class Device:
        def get_stream_for_external_ready_events(self):
            return 0x7700

    class GpuArray:
        def devices(self):
            return {Device()}

    assert adapters.JAX.cuda_stream(GpuArray(), 0) == 0x7700
    assert adapters.JAX.cuda_stream(jax.numpy.zeros(3), 0) is None
    assert adapters.JAX.hold_until_done and not adapters.TORCH.hold_until_done
