"""nn.Linear's training path on oneDNN (llmlab/model/linear.py) against F.linear + autograd."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmlab import device
from llmlab.model import linear as L

pytestmark = pytest.mark.skipif(not L.use_dnn(), reason="no oneDNN linear in this torch build")


@pytest.mark.parametrize("bias", [False, True])
def test_forward_and_gradients_match_f_linear(bias):
    torch.manual_seed(0)
    mod = nn.Linear(96, 160, bias=bias)
    x = torch.randn(4, 50, 96, requires_grad=True)  # 200 rows >= MIN_ROWS: the oneDNN path
    x_ref = x.detach().clone().requires_grad_(True)
    y = L.linear(mod, x)
    assert y.grad_fn is not None and "DnnLinear" in type(y.grad_fn).__name__
    g = torch.randn_like(y)
    y.backward(g)
    grads = (x.grad, mod.weight.grad, mod.bias.grad if bias else None)
    mod.zero_grad()
    y_ref = F.linear(x_ref, mod.weight, mod.bias)
    y_ref.backward(g)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0], x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1], mod.weight.grad, atol=1e-4, rtol=1e-5)
    if bias:
        torch.testing.assert_close(grads[2], mod.bias.grad, atol=1e-4, rtol=1e-5)


def test_other_cases_call_the_module_itself():
    mod = nn.Linear(8, 4)
    x = torch.randn(200, 8, requires_grad=True)
    with torch.no_grad():  # inference
        assert torch.equal(L.linear(mod, x), mod(x))
    small = torch.randn(3, 8, requires_grad=True)  # too few rows
    assert "DnnLinear" not in type(L.linear(mod, small).grad_fn).__name__
    seen = []
    h = mod.register_forward_hook(lambda m, i, o: seen.append(1))  # hooks still fire
    L.linear(mod, x)
    h.remove()
    assert seen == [1]

    class Wrapped(nn.Linear):  # a LoRA/adapter layer: its own forward runs
        def forward(self, x):
            return super().forward(x) * 0
    w = Wrapped(8, 4)
    assert torch.all(L.linear(w, x) == 0)


def test_model_training_step_matches_the_mkl_path(monkeypatch):
    from llmlab.model.config import ModelConfig
    from llmlab.model.transformer import Transformer
    from llmlab.train.loss import linear_cross_entropy
    cfg = ModelConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    ids = torch.randint(0, 300, (4, 33), generator=torch.Generator().manual_seed(0))

    def grads(dnn: bool):
        monkeypatch.setattr(device, "_ONEDNN", [dnn])
        torch.manual_seed(0)
        m = Transformer(cfg).train()
        loss = linear_cross_entropy(m(ids[:, :-1], return_hidden=True), m.lm_head.weight, ids[:, 1:])
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in m.named_parameters()}
    l1, g1 = grads(True)
    l0, g0 = grads(False)
    torch.testing.assert_close(l1, l0, atol=1e-5, rtol=1e-6)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.slow  # ~20-50 s of inductor compile on a CPU
def test_inside_torch_compile_the_module_path_is_traced():
    """inductor cannot lower the oneDNN op: under torch.compile `linear` calls the module (the
    speedrun's `torch_compile=true` on CPU crashed before), with the same values and gradients."""
    torch.manual_seed(0)
    mod = nn.Linear(32, 48)
    x = torch.randn(128, 32, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    torch._dynamo.reset()
    y = torch.compile(lambda t: L.linear(mod, t).relu())(x)
    y.sum().backward()
    gw = mod.weight.grad.clone()
    mod.zero_grad()
    y_ref = F.linear(x_ref, mod.weight, mod.bias).relu()
    y_ref.sum().backward()
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gw, mod.weight.grad, atol=1e-4, rtol=1e-5)
