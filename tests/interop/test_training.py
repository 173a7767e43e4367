"""Quantization-aware training in torch through dsquant's straight-through estimator: the example
of docs/training.md runs as written; one layer's gradients equal the STE definition computed
independently (the gradient of the same loss at the reference's fake-quantized weights); the
loss decreases eagerly and under torch.compile(fullgraph=True)."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import dsquant
import reference as ref

DOC = Path(__file__).resolve().parents[2] / "docs" / "training.md"
# inductor itself uses torch.jit.script_method, which warns in torch 2.13 (not dsquant's code)
COMPILE_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


@pytest.mark.filterwarnings(COMPILE_WARNING)
def test_the_documented_example_runs():
    torch_part = DOC.read_text().split("## JAX:")[0]          # the JAX example: tests/interop/test_jax.py
    blocks = re.findall(r"```python\n(.*?)```", torch_part, re.S)
    assert len(blocks) == 2
    torch._dynamo.reset()
    namespace = {}
    exec(compile("\n".join(blocks), str(DOC), "exec"), namespace)     # its asserts: the loss decreases
    assert namespace["losses"][-1] < namespace["losses"][0]


def _data():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 32)).astype(np.float32)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    target = rng.standard_normal((64, 8)).astype(np.float32)
    return w, torch.from_numpy(x), torch.from_numpy(target)


def _loss(x, weight, target):
    return torch.nn.functional.mse_loss(x @ weight.t(), target)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_gradient_is_the_straight_through_estimator(bits):
    """d loss / d w through dsquant == d loss / d w_q at w_q = fake_quantize(w) (the reference's)."""
    w, x, target = _data()
    weight = torch.from_numpy(w.copy()).requires_grad_()
    _loss(x, dsquant.fake_quantize(weight, 8, bits), target).backward()
    w_q = torch.from_numpy(ref.fake_quantize(w, 8, bits)).requires_grad_()
    _loss(x, w_q, target).backward()
    assert not torch.equal(w_q.detach(), weight.detach())      # the weights are really quantized
    assert torch.equal(weight.grad, w_q.grad)


def _train(step_fn, weight, steps=25, lr=0.1):
    losses = []
    for _ in range(steps):
        loss = step_fn(weight)
        loss.backward()
        with torch.no_grad():
            weight -= lr * weight.grad
            weight.grad = None
        losses.append(loss.item())
    return losses


@pytest.mark.filterwarnings(COMPILE_WARNING)
def test_training_loss_decreases_eagerly_and_compiled():
    w, x, target = _data()
    target = x @ torch.from_numpy(np.random.default_rng(2).standard_normal((8, 32)).astype(np.float32)).t()

    def step(weight):
        return _loss(x, dsquant.fake_quantize(weight, groups=8, bits=4), target)

    eager = _train(step, torch.from_numpy(w.copy()).requires_grad_())
    torch._dynamo.reset()
    compiled = _train(torch.compile(step, fullgraph=True), torch.from_numpy(w.copy()).requires_grad_())
    assert eager[-1] < 0.5 * eager[0], eager
    np.testing.assert_allclose(compiled, eager, rtol=1e-4)
