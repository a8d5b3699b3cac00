"""Fused chunked LM-head + cross-entropy vs F.cross_entropy; AdamW param groups; grad accumulation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmlab.model import ModelConfig, Transformer
from llmlab.train.loss import linear_cross_entropy
from llmlab.train.optim import param_groups


@pytest.mark.parametrize("chunk", [97 * 7, 1 << 22])
def test_fused_cross_entropy_matches_reference(chunk):
    torch.manual_seed(0)
    h = torch.randn(3, 20, 16, requires_grad=True)
    w = torch.randn(97, 16, requires_grad=True)
    y = torch.randint(0, 97, (3, 20))
    y[0, :6] = -100  # ignored positions
    ours = linear_cross_entropy(h, w, y, chunk_elems=chunk)
    (ours * 3).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = F.cross_entropy((h @ w.t()).view(-1, 97), y.view(-1), ignore_index=-100)
    (ref * 3).backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(gh, h.grad, atol=1e-6) and torch.allclose(gw, w.grad, atol=1e-6)
    with torch.no_grad():  # eval path: no gradients computed
        assert linear_cross_entropy(h, w, y, chunk_elems=chunk).item() == pytest.approx(ref.item(), rel=1e-6)


def test_fused_cross_entropy_extreme_logits():
    """Targets whose probability underflows fp32 (loss > 69 nats): the log-softmax fallback rows."""
    torch.manual_seed(1)
    h = (torch.randn(40, 16) * 30).requires_grad_()
    w = (torch.randn(97, 16) * 3).requires_grad_()
    y = torch.randint(0, 97, (40,))
    ours = linear_cross_entropy(h, w, y)
    ours.backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    logits = h @ w.t()
    assert (-torch.log_softmax(logits, -1).gather(1, y[:, None])).max() > 100  # really underflows
    ref = F.cross_entropy(logits, y)
    ref.backward()
    assert torch.isfinite(ours) and ours.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(gh, h.grad, atol=1e-5) and torch.allclose(gw, w.grad, atol=1e-4)


def test_fused_cross_entropy_bf16_autocast_close():
    torch.manual_seed(0)
    h, w, y = torch.randn(64, 32), torch.randn(50, 32) * 0.1, torch.randint(0, 50, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(h.requires_grad_(), w.requires_grad_(), y)
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(F.cross_entropy(h @ w.t(), y).item(), rel=1e-2)


def test_no_weight_decay_on_norms_biases_embeddings():
    m = Transformer(ModelConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                attention_bias=True, max_position_embeddings=16))
    decay, no_decay = param_groups(m, 0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert "model.embed_tokens.weight" in nd and "model.norm.weight" in nd
    assert "model.layers.0.self_attn.q_proj.bias" in nd and "model.layers.0.input_layernorm.weight" in nd
    assert "model.layers.0.mlp.down_proj.weight" in d and not any("norm" in n or "bias" in n for n in d)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(d) + len(nd) == len(list(m.parameters()))  # the tied head is counted once
    (all_,) = param_groups(m, 0.1, decay_all=True)
    assert len(all_["params"]) == len(list(m.parameters()))
