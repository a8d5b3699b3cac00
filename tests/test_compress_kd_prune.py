"""KD loss vs hand computation at T=1 and T=4; pruning masks, 2:4, Wanda, structured removal."""
import copy
import math

import pytest
import torch

from llmlab.compress import prune
from llmlab.compress.kd import distill_loss, kd_loss
from llmlab.errors import UserError


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_loss_matches_hand_computation(T):
    s = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    t = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    total = 0.0
    for zs, zt in zip(s, t):
        ps = [math.exp(v / T) for v in zs]
        pt = [math.exp(v / T) for v in zt]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        total += sum(p * math.log(p / q) for p, q in zip(pt, ps))
    expect = T * T * total / 2
    got = kd_loss(torch.tensor([s]), torch.tensor([t]), T)
    assert abs(float(got) - expect) < 1e-6
    # torch's own KL gives the same
    ref = torch.nn.functional.kl_div(torch.log_softmax(torch.tensor(s) / T, -1), torch.log_softmax(
        torch.tensor(t) / T, -1), log_target=True, reduction="batchmean") * T * T
    assert torch.allclose(got, ref)


def test_kd_gradient_scale_is_independent_of_T():
    torch.manual_seed(0)
    zs, zt = torch.randn(64, 10) * 0.1, torch.randn(64, 10) * 0.1  # small logits: the T^2 regime
    g = []
    for T in (2.0, 8.0):
        x = zs.clone().requires_grad_()
        kd_loss(x, zt, T).backward()
        g.append(x.grad.norm())
    assert 0.8 < float(g[0] / g[1]) < 1.25  # without T^2 it would be 16x


def test_distill_loss_mixes_and_masks():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    y = torch.randint(0, 7, (2, 5))
    y[0, :2] = -100
    ce = torch.nn.functional.cross_entropy(s.reshape(-1, 7), y.reshape(-1), ignore_index=-100)
    assert torch.allclose(distill_loss(s, t, y, 2.0, 0.0), ce)
    assert torch.allclose(distill_loss(s, t, y, 2.0, 1.0), kd_loss(s, t, 2.0, y != -100))
    with pytest.raises(UserError, match="vocabularies"):
        kd_loss(s, torch.randn(2, 5, 8))


def test_unstructured_and_nm_masks():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    m = prune.unstructured_mask(w.abs(), 0.25)
    assert int((~m).sum(1).unique()) == 4
    for r in range(8):  # each row drops exactly its 4 smallest
        assert set(torch.nonzero(~m[r]).flatten().tolist()) == set(w[r].abs().argsort()[:4].tolist())
    nm = prune.nm_mask(w.abs())
    assert bool((nm.view(8, 4, 4).sum(-1) == 2).all())
    with pytest.raises(UserError):
        prune.nm_mask(torch.randn(2, 6))


def test_wanda_uses_activation_norms():
    w = torch.tensor([[1.0, 0.5]])
    assert prune.unstructured_mask(prune.scores(w, "magnitude"), 0.5).tolist() == [[True, False]]
    wanda = prune.scores(w, "wanda", torch.tensor([1.0, 4.0]))  # the small weight meets big inputs
    assert prune.unstructured_mask(wanda, 0.5).tolist() == [[False, True]]


def test_structured_pruning_shrinks_and_runs(tiny_config):
    from llmlab.model.transformer import Transformer
    torch.manual_seed(0)
    model = Transformer(tiny_config).eval()
    ids = torch.randint(0, 97, (2, 12))
    m = copy.deepcopy(model)
    masks = prune.prune_unstructured(m, 0.5)
    assert abs(prune.sparsity_of(m) - 0.5) < 0.01 and len(masks) == 14
    m = copy.deepcopy(model)
    prune.prune_unstructured(m, pattern="2:4")
    assert abs(prune.sparsity_of(m) - 0.5) < 1e-6
    m = copy.deepcopy(model)
    n_before = m.num_params()
    prune.prune_channels(m, 0.5)
    prune.prune_heads(m, 0.5)
    dropped = prune.prune_layers(m, 1, ids)
    assert len(dropped) == 1 and m.config.num_hidden_layers == 1
    assert m(ids).shape == (2, 12, 97) and m.num_params() < n_before
    assert m.config.num_attention_heads == 2 and m.config.num_key_value_heads == 1
    # removing nothing changes nothing
    m2 = copy.deepcopy(model)
    prune.prune_channels(m2, 0.0)
    with torch.no_grad():
        assert torch.allclose(m2(ids), model(ids), atol=1e-5)


def test_recovery_keeps_pruned_weights_zero_and_lowers_loss(tiny_config):
    from llmlab.compress.commands import _recover
    from llmlab.model.transformer import Transformer
    torch.manual_seed(0)
    model = Transformer(tiny_config)
    masks = prune.prune_unstructured(model, 0.5)
    calib = torch.randint(0, 97, (2, 16))

    def loss():
        with torch.no_grad():
            lg = model(calib)[:, :-1]
            return float(torch.nn.functional.cross_entropy(lg.reshape(-1, 97), calib[:, 1:].reshape(-1)))
    before = loss()
    _recover(model, masks, calib, steps=20, lr=1e-2)
    assert abs(prune.sparsity_of(model) - 0.5) < 0.01
    assert loss() < before


def test_topk_kd_equals_full_kd_at_full_k_and_drops_the_tail_below():
    from llmlab.compress.kd import topk_kd_loss
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g) * 3
    y = torch.randint(0, 11, (2, 5), generator=g)
    v, i = t.topk(11, dim=-1)
    for T in (1.0, 4.0):
        assert torch.allclose(topk_kd_loss(s, v, i, T), kd_loss(s, t, T), atol=1e-6)
        assert torch.allclose(distill_loss(s, (v, i), y, T, 0.5), distill_loss(s, t, y, T, 0.5), atol=1e-6)
    v3, i3 = t.topk(3, dim=-1)  # hand computation of one position at k = 3
    p = torch.softmax(v3[0, 0] / 2, -1)
    q = torch.log_softmax(s[0, 0] / 2, -1)[i3[0, 0]]
    assert torch.allclose(topk_kd_loss(s[:1, :1], v3[:1, :1], i3[:1, :1], 2.0), 4 * (p * (p.log() - q)).sum(), atol=1e-6)
