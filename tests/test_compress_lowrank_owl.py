"""Low-rank SVD factorisation (error = the discarded singular values, against torch.linalg.svd) and
OWL layer-wise sparsity (ratios against a hand computation; lambda = 0 is exactly Wanda)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from llmlab.compress import prune
from llmlab.compress.lowrank import choose_rank, factorize, factorize_model
from llmlab.errors import UserError
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer


def test_svd_factor_error_is_the_discarded_singular_values():
    torch.manual_seed(0)
    lin = nn.Linear(16, 24)
    s_ref = torch.linalg.svdvals(lin.weight.detach().double())
    new, rel = factorize(lin, rank=5)
    w_r = (new.B.weight @ new.A.weight).double()
    diff = lin.weight.detach().double() - w_r
    assert new.A.weight.shape == (5, 16) and new.B.weight.shape == (24, 5)
    assert abs(diff.norm() - s_ref[5:].pow(2).sum().sqrt()) < 1e-5  # Eckart-Young, Frobenius
    assert abs(torch.linalg.matrix_norm(diff, 2) - s_ref[5]) < 1e-5  # spectral: the first discarded
    assert abs(rel - float(s_ref[5:].pow(2).sum().sqrt() / s_ref.pow(2).sum().sqrt())) < 1e-6
    x = torch.randn(3, 16)
    assert (new(x) - (x @ w_r.float().T + lin.bias)).abs().max() < 1e-5
    full, rel_full = factorize(lin, rank=16)  # full rank: exact
    assert rel_full < 1e-6 and (full(x) - lin(x)).abs().max() < 1e-5


def test_energy_rank_by_hand():
    s = torch.tensor([4.0, 3.0, 2.0, 1.0])  # energies 16, 9, 4, 1 of 30
    assert choose_rank(s, energy=0.5) == 1  # 16/30 = 0.533
    assert choose_rank(s, energy=0.8) == 2  # 25/30 = 0.833
    assert choose_rank(s, energy=25 / 30) == 2
    assert choose_rank(s, energy=0.84) == 3  # 29/30
    assert choose_rank(s, energy=1.0) == 4
    assert choose_rank(s, rank=9) == 4
    with pytest.raises(UserError):
        choose_rank(s, energy=0.0)


def test_factorize_model_keeps_only_smaller_layers():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4)).eval()
    n0, ids = m.num_params(), torch.randint(0, 50, (1, 8))
    rep = factorize_model(copy.deepcopy(m), rank=100)  # no layer gets smaller: all stay dense
    assert all(r["rank"] is None for r in rep.values())
    small = copy.deepcopy(m)
    rep = factorize_model(small, rank=4)
    assert all(r["rank"] == 4 for r in rep.values()) and len(rep) == 2 * 7
    saved = sum(r["before"] - r["after"] for r in rep.values())
    assert small.num_params() == n0 - saved
    with torch.no_grad():
        assert small(ids).shape == m(ids).shape


def test_owl_ratios_by_hand():
    sc = torch.ones(10)
    sc[3] = 20.0  # mean 2.9, threshold 5 * 2.9 = 14.5: one outlier in ten
    assert prune.outlier_ratio([sc[:4], sc[4:]], 5.0) == pytest.approx(0.1)
    # D = (0.01, 0.03, 0.02), S = 0.5, lambda = 0.08: keep (0, .16, .08) -> minus mean .08 plus .5
    got = prune.owl_sparsities([0.01, 0.03, 0.02], 0.5, 0.08)
    assert got == pytest.approx([0.58, 0.42, 0.50])
    assert prune.owl_sparsities([0.02, 0.02], 0.5, 0.08) == pytest.approx([0.5, 0.5])
    with pytest.raises(UserError):
        prune.owl_sparsities([0.1, 0.2], 0.95, 0.08)


def _model_and_norms():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                num_attention_heads=4)).eval()
    from llmlab.quant.calibrate import quantizable_linears
    g = torch.Generator().manual_seed(1)
    norms = {n: torch.rand(mod.in_features, generator=g) + 0.5 for n, mod in quantizable_linears(m).items()}
    with torch.no_grad():  # plant outlier weights in block 1
        m.model.layers[1].mlp.up_proj.weight[:, :3] *= 40
    return m, norms


def test_owl_prunes_outlier_blocks_less_and_keeps_the_mean():
    m, norms = _model_and_norms()
    masks, per_block = prune.prune_owl(m, 0.5, norms, m=5.0, lam=0.08)
    assert sum(per_block) / 3 == pytest.approx(0.5)
    assert min(per_block) == per_block[1]  # most outliers: pruned least
    assert max(per_block) - min(per_block) == pytest.approx(2 * 0.08)  # kept shares span 2 lambda
    for i, layer in enumerate(m.model.layers):
        w = layer.self_attn.q_proj.weight
        assert float((w == 0).float().mean()) == pytest.approx(int(w.shape[1] * per_block[i]) / w.shape[1])
    # lambda = 0 is plain Wanda at the uniform sparsity
    a, _ = _model_and_norms()
    b = copy.deepcopy(a)
    prune.prune_owl(a, 0.5, norms, lam=0.0)
    prune.prune_unstructured(b, 0.5, "wanda", act_norms=norms)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
