"""MoE routing, capacity, losses (vs a per-token loop and HF's Mixtral loss) and FlashAttention
(outputs and every gradient vs SDPA)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmlab.model import ModelConfig
from llmlab.model.moe import MoE, load_balancing_loss, z_loss


def _moe(**kw):
    cfg = ModelConfig(vocab_size=11, hidden_size=16, num_attention_heads=2, intermediate_size=24,
                      num_local_experts=4, num_experts_per_tok=2, **kw)
    torch.manual_seed(0)
    m = MoE(cfg)
    for p in m.parameters():
        torch.nn.init.normal_(p, 0, 0.3)
    return m


def _loop_reference(m, x):
    """Token by token, expert by expert: the definition."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        logits = m.gate(x[t])
        if m.cfg.router_order == "topk_softmax":
            top, idx = logits.topk(m.k)
            w = top.softmax(-1)
        else:
            w, idx = logits.softmax(-1).topk(m.k)
            w = w / w.sum() if m.cfg.norm_topk_prob else w
        for wi, e in zip(w, idx):
            g, u = (m.experts.gate_up_proj[e] @ x[t]).chunk(2)
            out[t] += wi * (m.experts.down_proj[e] @ (F.silu(g) * u))
        if m.cfg.n_shared_experts:
            out[t] += m.shared_experts(x[t][None])[0]
    return out


@pytest.mark.parametrize("kw", [{}, {"router_order": "topk_softmax"}, {"norm_topk_prob": False},
                                {"n_shared_experts": 2, "moe_intermediate_size": 8}])
def test_moe_equals_token_loop(kw):
    m = _moe(**kw)
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        assert (m(x).view(-1, 16) - _loop_reference(m, x.view(-1, 16))).abs().max() < 1e-5
    assert m.dropped == 0 and int(m.counts.sum()) == 18 * 2


def test_topk_then_softmax_equals_renormalised_softmax_then_topk():
    a, b = _moe(router_order="topk_softmax"), _moe()
    x = torch.randn(20, 16)
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), atol=1e-6)


def test_capacity_drops_late_assignments_and_counts_them():
    m = _moe(capacity_factor=0.5)
    x = torch.randn(12, 16)
    with torch.no_grad():
        y = m(x)
        _, idx = m.route(m.gate(x))
    cap = math.ceil(0.5 * 12 * 2 / 4)
    counts = torch.bincount(idx.flatten(), minlength=4)
    assert torch.equal(m.counts, counts) and m.dropped == int((counts - cap).clamp(min=0).sum()) > 0
    # reference: the first `cap` assignments of each expert in token order survive
    seen, ref = [0] * 4, torch.zeros_like(x)
    w, idx = m.route(m.gate(x))
    for t in range(12):
        for s in range(2):
            e = int(idx[t, s])
            seen[e] += 1
            if seen[e] <= cap:
                g, u = (m.experts.gate_up_proj[e] @ x[t]).chunk(2)
                ref[t] += w[t, s] * (m.experts.down_proj[e] @ (F.silu(g) * u))
    assert (y - ref).abs().max() < 1e-5


def test_losses_match_hf_and_hand():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
    logits = [torch.randn(10, 4), torch.randn(10, 4)]
    ref = load_balancing_loss_func(tuple(logits), 4, 2)
    assert torch.allclose(load_balancing_loss(logits, 4, 2), ref, atol=1e-6)
    allx = torch.cat(logits)
    assert torch.allclose(z_loss(logits), (allx.exp().sum(-1).log() ** 2).mean(), atol=1e-5)


def test_model_loss_includes_router_losses():
    from llmlab.model import Transformer
    cfg = dict(vocab_size=31, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_local_experts=4)
    torch.manual_seed(0)
    plain = Transformer(ModelConfig(**cfg))
    torch.manual_seed(0)
    aux = Transformer(ModelConfig(**cfg, router_aux_loss_coef=0.1, router_z_loss_coef=0.01))
    ids = torch.randint(0, 31, (2, 9))
    lp, la = plain.loss(ids[:, :-1], ids[:, 1:]), aux.loss(ids[:, :-1], ids[:, 1:])
    logits = [b.mlp.router_logits for b in aux.model.layers]
    assert torch.allclose(la - lp, 0.1 * load_balancing_loss(logits, 4, 2) + 0.01 * z_loss(logits), atol=1e-6)
    la.backward()
    assert aux.model.layers[0].mlp.gate.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("T,S,Hkv,causal", [(300, 300, 4, True), (200, 200, 1, False), (70, 330, 2, True)])
def test_flash_attention_outputs_and_all_gradients_match_sdpa(T, S, Hkv, causal):
    from llmlab.model.flash import flash_attention
    torch.manual_seed(0)
    q = torch.randn(2, 4, T, 16, requires_grad=True)
    k = torch.randn(2, Hkv, S, 16, requires_grad=True)
    v = torch.randn(2, Hkv, S, 16, requires_grad=True)
    dout = torch.randn(2, 4, T, 16)
    mask = None
    if causal and S != T:  # queries are the last T positions (decoding after a cached prefix)
        mask = torch.ones(T, S, dtype=torch.bool).tril(S - T)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and S == T, enable_gqa=Hkv != 4)
    ref_grads = torch.autograd.grad(ref, (q, k, v), dout)
    out = flash_attention(q, k, v, causal=causal, block=64)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    assert (out - ref).abs().max() < 1e-5
    for g, r in zip(grads, ref_grads):
        assert (g - r).abs().max() < 1e-4


def test_moe_gradients_equal_token_loop():
    """The grouped-GEMM dispatch (oneDNN path included: >= 64 rows) backpropagates like the loop."""
    m = _moe(n_shared_experts=1)
    x = torch.randn(80, 16)
    g1 = torch.autograd.grad(m(x).square().sum(), list(m.parameters()))
    g2 = torch.autograd.grad(_loop_reference(m, x).square().sum(), list(m.parameters()))
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
