"""dsquant.compat.deepspeed.install() against the real DeepSpeed package on the CPU accelerator
(DS_ACCELERATOR=cpu, no op build): the caches it sets, the builders it leaves alone, and DeepSpeed's
own code running on dsquant: qwZ's CUDAQuantizer, qgZ's all_to_all_quant_reduce on a 4-rank gloo
group, inference int4/int8 weight quantization of a small model. Expected values come from the
NumPy references in tests/ (never from the code under test)."""
import os
import socket
import subprocess
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")   # before deepspeed is imported: its accelerator is chosen then
os.environ.setdefault("DS_BUILD_OPS", "0")

import numpy as np
import pytest
import torch

from _optional import require

deepspeed = require("deepspeed")   # the test extra installs it: missing fails here (skips only under the GPU check)

import deepspeed.ops.op_builder as op_builder  # noqa: E402
from deepspeed.accelerator import get_accelerator  # noqa: E402

import reference_int as ref_int  # noqa: E402
import reference_zeropp as ref_zpp  # noqa: E402
from dsquant.compat import deepspeed as ds_ops  # noqa: E402
from helpers import check_exact  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def installed():
    return ds_ops.install()


def test_install_sets_every_cache_this_version_has(installed):
    from deepspeed.inference.quantization import utils as inference_utils
    from deepspeed.runtime.comm import coalesced_collectives
    from deepspeed.runtime.zero.partition_parameters import CUDAQuantizer
    assert coalesced_collectives.quantizer_module is ds_ops
    assert CUDAQuantizer.quantizer_cuda_module is ds_ops
    assert inference_utils.quantizer_module is ds_ops
    assert op_builder.QuantizerBuilder().load() is ds_ops
    assert get_accelerator().create_op_builder("QuantizerBuilder").load() is ds_ops
    assert len(installed) >= 5
    try:                                               # ds_quantizer / MoQ: gone in 0.19.8
        from deepspeed.ops.quantizer import quantizer
    except ImportError:
        return
    assert quantizer.quantizer_cuda_module is ds_ops


def test_install_leaves_other_builders_alone():
    # (the FP quantizer's builder is routed too: tests/compat/test_deepspeed_fp_real.py)
    other = get_accelerator().get_op_builder("InferenceBuilder")
    assert other is not op_builder.QuantizerBuilder and other.__module__.startswith("deepspeed.")
    if other.__name__ == "NotImplementedBuilder":      # the CPU accelerator's shared class
        with pytest.raises(ValueError):
            other().load()


def test_install_is_idempotent():
    first = ds_ops.install()
    wrapped = get_accelerator().get_op_builder
    assert ds_ops.install() == first
    assert get_accelerator().get_op_builder is wrapped          # not wrapped twice


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cuda_quantizer_round_trip(dtype):
    """qwZ: CUDAQuantizer casts to float16, quantizes 8-bit symmetric, dequantizes to float16."""
    from deepspeed.runtime.zero.partition_parameters import CUDAQuantizer
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(8 * 4096).astype(np.float32)).to(dtype)
    quantizer = CUDAQuantizer()
    q, scales = quantizer.quantize(x)
    y = quantizer.dequantize(q, scales)
    half = x.to(torch.float16).numpy()
    groups = scales.numel()
    exp_q, exp_p = ref_int.quantize_ref(half, groups, 8, True)
    check_exact(q.numpy().view(np.uint8), exp_q.reshape(q.shape))
    check_exact(scales.numpy(), exp_p)
    check_exact(y.numpy(), ref_int.dequantize_ref(exp_q, exp_p, 8, np.float16).reshape(y.shape))


@pytest.mark.parametrize("bits", [4, 8])
def test_inference_weight_quantization_of_a_small_model(bits, monkeypatch):
    """QuantizedLinear layers (float16, group_dim = last) dequantize through the quantizer module's
    experimental kernels on every forward: dsquant's, here."""
    from deepspeed.inference.quantization import layers
    # DeepSpeed caches quantized weights by id() of the float weight: a new model in the same
    # process can reuse a freed weight's id and get another model's codes
    monkeypatch.setattr(layers, "quantized_weight_registry", {})
    calls = []
    name = f"dequantize_int{bits}_to_half_experimental"
    original = getattr(ds_ops, name)

    def spy(*args):
        calls.append((args, original(*args)))
        return calls[-1][1]
    monkeypatch.setattr(ds_ops, name, spy)
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(128, 128) for _ in range(3)]).half()
    config = {"num_bits": bits, "group_size": 64, "group_dim": 1, "symmetric": False}
    quantized = torch.nn.Sequential(*[layers.QuantizedLinear(config, layer) for layer in model])
    x = torch.randn(16, 128).half()
    with torch.no_grad():
        out, exact = quantized(x), model(x)
    assert len(calls) == 3
    for (data, scale, minimum, num_group, group_size), result in calls:
        expected = ref_int.uint_half_ref(data.view(torch.uint8).numpy(), scale.numpy(), minimum.numpy(),
                                         num_group, group_size, bits)
        check_exact(result.numpy(), expected)
    diff = (out.float() - exact.float()).abs().mean().item()
    assert diff < (0.15 if bits == 4 else 0.02), diff          # DeepSpeed's own test: < 0.15


# ------------------------------------------------------------------------------ qgZ on gloo
NODES, DPN = 2, 2
SHAPE = (16, 64)


def _grad(rank):
    return np.random.default_rng(100 + rank).standard_normal(SHAPE).astype(np.float16)


def _qgz_rank(rank, port, out_dir):
    os.environ.update(DS_ACCELERATOR="cpu", LOCAL_SIZE=str(DPN), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      RANK=str(rank), WORLD_SIZE=str(NODES * DPN), LOCAL_RANK=str(rank % DPN),
                      OMP_NUM_THREADS="1", DSQUANT_NUM_THREADS="1")
    import deepspeed
    import deepspeed.comm as dist
    from deepspeed.runtime.comm import coalesced_collectives
    ds_ops.install()
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    groups = {}
    for node in range(NODES):
        groups[f"local_{node}"] = dist.new_group([node * DPN + d for d in range(DPN)])
    for d in range(DPN):
        groups[f"global_{d}"] = dist.new_group([m * DPN + d for m in range(NODES)])
    out, = coalesced_collectives.all_to_all_quant_reduce([torch.from_numpy(_grad(rank))], groups)
    np.save(os.path.join(out_dir, f"rank{rank}.npy"), out.numpy())
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_qgz_all_to_all_quant_reduce_on_four_gloo_ranks(tmp_path):
    """DeepSpeed's qgZ (4-bit swizzle, intra-node all-to-all, quantized reduction, inter-node
    all-to-all, float16 dequantize, float16 mean over nodes) on dsquant: every rank gets its own
    partition, bit for bit what the NumPy reference gives, and close to the exact reduction."""
    torch.multiprocessing.spawn(_qgz_rank, args=(_free_port(), str(tmp_path)), nprocs=NODES * DPN, join=True)
    world = NODES * DPN
    grads = [_grad(r) for r in range(world)]
    groups = max(SHAPE[0], SHAPE[1], world)                    # DeepSpeed's choice

    def deepspeed_mean(parts):
        # dequantize gives float16 parts; sum() adds them in float16 (from 0), then / nodes
        total = np.float16(0)
        for part in parts:
            total = (total + part.astype(np.float16)).astype(np.float16)
        return (total / np.float16(NODES)).astype(np.float16)

    expected = ref_zpp.qgz_ref(grads, groups, 4, True, NODES, DPN, divisor=None, combine=deepspeed_mean)
    exact = (sum(g.astype(np.float64) for g in grads) / NODES).reshape(world, -1)
    # 4-bit codes: at most one step (absmax/8 of its group) per input and stage
    bound = 2 * world * np.abs(np.stack(grads)).max() / 8 / NODES
    for r in range(world):
        got = np.load(tmp_path / f"rank{r}.npy")
        check_exact(got, expected[r])
        assert np.abs(got.astype(np.float64) - exact[r]).max() <= bound


@pytest.mark.parametrize("flag", ["1", ""])
def test_install_from_env_waits_for_deepspeed(flag):
    """What a sitecustomize runs on every rank: nothing is imported early; with DSQUANT_DEEPSPEED=1
    importing deepspeed installs dsquant."""
    code = ("import sys, dsquant.compat.deepspeed as d; asked = d.install_from_env();"
            "assert 'deepspeed' not in sys.modules;"
            "import deepspeed; from deepspeed.runtime.comm import coalesced_collectives as c;"
            "from deepspeed.ops import op_builder;"
            "print(asked, c.quantizer_module is d, op_builder.QuantizerBuilder.__module__)")
    env = dict(os.environ, DSQUANT_DEEPSPEED=flag, DS_ACCELERATOR="cpu")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    asked, cached, builder = result.stdout.split()[-3:]
    assert (asked, cached) == ((flag == "1") * "True" or "False", (flag == "1") * "True" or "False")
    assert (builder == "dsquant.compat.deepspeed_plugin") == (flag == "1")
