"""Device honesty (issue 13): the device a DLPack producer reports through __dlpack_device__ must
be the device of the capsule it hands over; a mismatch, a bogus device or a raising or malformed
__dlpack_device__ is a BufferError, for every op's intake."""
import numpy as np
import pytest

import dsquant

DEVICE_CPU, DEVICE_CUDA = 1, 2


class Producer:
    """NumPy memory (a CPU capsule) behind whatever __dlpack_device__ we like."""

    def __init__(self, array, device):
        self.array = array
        self.device = device

    def __dlpack_device__(self):
        if isinstance(self.device, Exception):
            raise self.device
        return self.device

    def __dlpack__(self, *, stream=None, max_version=None, **kwargs):
        if max_version is not None:
            return self.array.__dlpack__(max_version=max_version)
        return self.array.__dlpack__()


X = np.linspace(-1, 1, 8, dtype=np.float32)
LIES = {
    "claims-cuda": (DEVICE_CUDA, 0),
    "claims-another-cpu": (DEVICE_CPU, 3),
    "bogus-type": (99, 0),
    "raises": RuntimeError("no device"),
    "not-a-pair": (1,),
    "not-integers": ("cpu", 0),
    "none": None,
}


def calls(x):
    return {
        "fake_quantize": lambda: dsquant.fake_quantize(x, 2, 4),
        "ds_quantizer": lambda: dsquant.ds_quantizer(x, 2, 4),
        "quantize": lambda: dsquant.quantize(x, 2, 4),
        "swizzle_quantize": lambda: dsquant.swizzle_quantize(x, 2, 4),
        "fake_quantize.out": lambda: dsquant.fake_quantize(X, 2, 4, out=x),
    }


@pytest.mark.parametrize("op", ["fake_quantize", "ds_quantizer", "quantize", "swizzle_quantize", "fake_quantize.out"])
@pytest.mark.parametrize("lie", list(LIES))
def test_a_producer_must_say_where_its_memory_is(lie, op):
    x = Producer(X.copy(), LIES[lie])
    with pytest.raises(BufferError, match="__dlpack_device__"):
        calls(x)[op]()


def test_codes_and_params_are_checked_too():
    q, params = dsquant.quantize(X, 2, 4)
    with pytest.raises(BufferError, match="__dlpack_device__"):
        dsquant.dequantize(Producer(q, (DEVICE_CUDA, 0)), params, 4)
    with pytest.raises(BufferError, match="__dlpack_device__"):
        dsquant.dequantize(q, Producer(params, (DEVICE_CPU, 1)), 4)


def test_an_honest_producer_is_accepted():
    expected = dsquant.fake_quantize(X, 2, 4)
    assert np.array_equal(dsquant.fake_quantize(Producer(X, (DEVICE_CPU, 0)), 2, 4), expected)
