"""MoE from a dense model: sparse upcycling (output unchanged at init) and PanGu-Sigma's random-routed
experts (no gate; a domain's sub-model computes what the full model does on that domain)."""
from __future__ import annotations

import copy

import pytest
import torch

from llmlab.errors import UserError
from llmlab.model.config import ModelConfig
from llmlab.model.rre import extract_domain, random_route, set_domain
from llmlab.model.transformer import Transformer, num_params
from llmlab.model.upcycle import expert_copy_error, upcycle

CFG = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
           max_position_embeddings=32)


def _dense():
    torch.manual_seed(0)
    return Transformer(ModelConfig(**CFG)).eval()


@pytest.mark.parametrize("E,k,order", [(4, 2, "softmax_topk"), (4, 1, "softmax_topk"), (3, 2, "topk_softmax")])
def test_upcycled_moe_equals_dense_at_init(E, k, order):
    dense = _dense()
    ids = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = dense(ids)
        moe = upcycle(copy.deepcopy(dense), E, k, router_order=order)
        got = moe(ids)
    assert (got - ref).abs().max() < 1e-5
    assert expert_copy_error(moe) == 0.0
    assert moe.num_params() == num_params(moe.config)  # an ordinary MoE config now
    r = moe.model.layers[0].mlp.router_logits  # a fresh router: tokens do not all pick the same experts
    assert r.shape == (18, E) and r.std() > 0


def test_upcycled_router_gets_no_lm_gradient_at_init_and_experts_diverge():
    moe = upcycle(_dense(), 4, 2).train()
    ids = torch.randint(0, 61, (4, 12), generator=torch.Generator().manual_seed(2))
    moe.loss(ids, ids).backward()
    gate = moe.model.layers[0].mlp.gate.weight.grad
    assert gate.abs().max() < 1e-6  # identical experts + weights summing to 1 (docstring)
    opt = torch.optim.SGD(moe.parameters(), lr=0.5)
    opt.step()
    assert expert_copy_error(moe) > 0  # experts saw different tokens


def test_upcycle_refuses_bad_input():
    with pytest.raises(UserError):
        upcycle(_dense(), 2, 3)
    plain = Transformer(ModelConfig(**CFG, mlp="gelu"))
    with pytest.raises(UserError):
        upcycle(plain, 2, 1)


def test_random_routed_experts_extract_domain():
    dense = _dense()
    ids = torch.randint(0, 61, (2, 10), generator=torch.Generator().manual_seed(3))
    rre = random_route(copy.deepcopy(dense), num_domains=3, experts_per_domain=2, sparse_layers=2, seed=0)
    assert not any("gate.weight" in n for n, _ in rre.named_parameters())  # no learned router
    with torch.no_grad():
        assert (rre(ids) - dense(ids)).abs().max() < 1e-5  # experts start as the dense MLP
        for p in rre.parameters():  # make the experts differ so routing matters
            if p.dim() == 3:
                p.add_(torch.randn_like(p) * 0.05)
        outs = []
        for d in range(3):
            set_domain(rre, d)
            full = rre(ids)
            sub = extract_domain(rre, d)
            assert sub.model.layers[-1].mlp.experts.gate_up_proj.shape[0] == 2
            assert (sub(ids) - full).abs().max() < 1e-6
            outs.append(full)
        assert (outs[0] - outs[1]).abs().max() > 1e-4  # domains use different experts
    table = rre.model.layers[-1].mlp.table
    assert set(table.unique().tolist()) == {0, 1} and table.shape == (3, 61)
    # the assignment is a fixed function of (domain, token): the same token -> the same expert
    set_domain(rre, 1)
    with torch.no_grad():
        a = rre(ids)
        b = rre(ids)
    assert torch.equal(a, b)


def test_upcycled_model_round_trips_as_hf_dir(tmp_path):
    from llmlab.model.hf import load_hf_dir, save_hf_dir
    moe = upcycle(_dense(), 4, 2)
    save_hf_dir(moe, tmp_path)
    ids = torch.randint(0, 61, (1, 7))
    with torch.no_grad():
        assert (load_hf_dir(tmp_path)(ids) - moe(ids)).abs().max() < 1e-6
