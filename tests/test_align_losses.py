"""Every alignment loss against a hand computation (plain `math`) on fixed numbers."""
from __future__ import annotations

import math
import types

import pytest
import torch

from llmlab.align import advantages as A
from llmlab.align import policy_losses as P
from llmlab.align import preference_losses as L
from llmlab.align import rm_losses as R
from llmlab.align.masked import masked_whiten


def sig(x):
    return 1 / (1 + math.exp(-x))


def t(*v):
    return torch.tensor(v, dtype=torch.float64)


def test_bradley_terry_hand():
    loss = R.bradley_terry_loss(t(1.0, 0.5), t(0.0, 2.0))
    ref = (-math.log(sig(1.0)) - math.log(sig(-1.5))) / 2
    assert loss.item() == pytest.approx(ref, rel=1e-12)


def test_plackett_luce_hand_and_k2_equals_bt():
    r = t(2.0, 1.0, -0.5).unsqueeze(0)
    e = [math.exp(x) for x in (2.0, 1.0, -0.5)]
    ref = -(math.log(e[0] / sum(e)) + math.log(e[1] / (e[1] + e[2])) + 0.0)
    assert R.plackett_luce_loss(r).item() == pytest.approx(ref, rel=1e-12)
    pair = t(0.3, 1.7).unsqueeze(0)
    assert R.plackett_luce_loss(pair).item() == pytest.approx(R.bradley_terry_loss(t(0.3), t(1.7)).item(), rel=1e-12)
    # a padded shorter list scores like the unpadded one
    padded = t(2.0, 1.0, -0.5, 99.0).unsqueeze(0)
    mask = torch.tensor([[True, True, True, False]])
    assert R.plackett_luce_loss(padded, mask).item() == pytest.approx(ref, rel=1e-12)
    assert R.ranking_to_pairs(3) == [(0, 1), (0, 2), (1, 2)]


def test_dpo_hand_and_log2_at_reference():
    pc, pr, rc, rr, beta = t(-5.0), t(-7.0), t(-6.0), t(-6.5), 0.1
    loss, stats = L.dpo_loss(pc, pr, rc, rr, beta)
    h = beta * ((-5.0 + 6.0) - (-7.0 + 6.5))
    assert loss.item() == pytest.approx(-math.log(sig(h)), rel=1e-12)
    assert stats["margin"].item() == pytest.approx(h, rel=1e-12)
    same, _ = L.dpo_loss(pc, pr, pc, pr, beta)
    assert same.item() == pytest.approx(math.log(2), rel=1e-12)


def test_ipo_hand():
    loss, _ = L.ipo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.2), beta=0.5)
    h = (-1.0 + 1.5) - (-2.0 + 1.2)
    assert loss.item() == pytest.approx((h - 1 / (2 * 0.5)) ** 2, rel=1e-12)


def test_kto_hand_with_reference_point():
    lp, ref = t(-3.0, -4.0, -2.0), t(-3.5, -3.0, -2.5)
    labels = torch.tensor([True, False, True])
    z0 = L.kto_reference_point(t(-5.0, -6.0), t(-5.5, -5.9))  # mean(0.5, -0.1) = 0.2
    assert z0.item() == pytest.approx(0.2, rel=1e-12)
    loss, _ = L.kto_loss(lp, ref, labels, z0, beta=0.5, desirable_weight=1.0, undesirable_weight=1.5)
    ref_vals = [1.0 * (1 - sig(0.5 * (0.5 - 0.2))), 1.5 * (1 - sig(0.5 * (0.2 - (-1.0)))),
                1.0 * (1 - sig(0.5 * (0.5 - 0.2)))]
    assert loss.tolist() == pytest.approx(ref_vals, rel=1e-12)
    # a negative KL estimate is clamped to 0
    assert L.kto_reference_point(t(-6.0), t(-5.0)).item() == 0.0


def test_orpo_hand():
    cw, cl, nll, lam = t(-0.4), t(-1.3), t(0.4), 0.2
    loss, stats = L.orpo_loss(cw, cl, nll, lam)
    pw, pl = math.exp(-0.4), math.exp(-1.3)
    lor = math.log(pw / (1 - pw)) - math.log(pl / (1 - pl))
    assert stats["log_odds_ratio"].item() == pytest.approx(lor, rel=1e-10)
    assert loss.item() == pytest.approx(0.4 - lam * math.log(sig(lor)), rel=1e-10)


@pytest.mark.slow  # importing trl takes ~10 s
def test_orpo_matches_trl():
    trl_orpo = pytest.importorskip("trl.experimental.orpo.orpo_trainer")
    cw, cl = t(-0.4, -2.0, -0.05), t(-1.3, -0.7, -3.0)
    fake = types.SimpleNamespace(beta=0.1, accelerator=types.SimpleNamespace(device="cpu"))
    trl_losses, *_ = trl_orpo.ORPOTrainer.odds_ratio_loss(fake, cw, cl)
    ours, _ = L.orpo_loss(cw.float(), cl.float(), torch.zeros(3), 0.1)
    # TRL returns +beta*logsigmoid (subtracted from the NLL later); ours is NLL - lambda*logsigmoid
    assert torch.allclose(-trl_losses, ours, atol=1e-6)


def test_ppo_clip_hand_and_gradients():
    old = torch.zeros(4, dtype=torch.float64)
    logp = t(math.log(1.5), math.log(1.1), math.log(0.5), math.log(0.9)).requires_grad_()
    adv = t(1.0, 1.0, -1.0, -1.0)
    mask = torch.ones(4)
    loss, stats = P.ppo_clip_loss(logp, old, adv, mask, clip_eps=0.2)
    ref = [-min(1.5 * 1, 1.2 * 1), -min(1.1, 1.1), -min(0.5 * -1, 0.8 * -1), -min(0.9 * -1, 0.9 * -1)]
    assert loss.item() == pytest.approx(sum(ref) / 4, rel=1e-12)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    loss.backward()
    g = logp.grad
    assert g[0] == 0 and g[2] == 0  # ratio beyond 1+eps with A>0, below 1-eps with A<0: no gradient
    assert g[1].item() == pytest.approx(-1.1 / 4) and g[3].item() == pytest.approx(0.9 / 4)
    # at rho = 1 the loss is -A
    l1, _ = P.ppo_clip_loss(old, old, adv, mask)
    assert l1.item() == pytest.approx(-adv.mean().item())


def test_value_loss_hand():
    v, old, ret = t(1.0, 0.0), t(0.5, 0.1), t(2.0, -1.0)
    loss, stats = P.value_loss(v, old, ret, torch.ones(2), clip_range_value=0.2)
    # row 0: unclipped (1-2)^2=1, clipped 0.7 -> (0.7-2)^2=1.69 -> 1.69 ; row 1: (0+1)^2=1, clip 0.0 same -> 1
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2, rel=1e-12)
    assert stats["vf_clipfrac"].item() == pytest.approx(0.5)


def test_entropy_from_logits():
    z = torch.randn(3, 7, dtype=torch.float64)
    p = z.softmax(-1)
    assert torch.allclose(P.entropy_from_logits(z).double(), -(p * p.log()).sum(-1), atol=1e-6)


def test_k3_hand_and_properties():
    lp, ref = t(math.log(0.2), math.log(0.5)), t(math.log(0.4), math.log(0.5))
    k = P.k3_kl(lp, ref)
    assert k[0].item() == pytest.approx(2.0 - math.log(2.0) - 1, rel=1e-12)
    assert k[1].item() == 0.0
    x = torch.randn(100, dtype=torch.float64)
    assert (P.k3_kl(x, torch.randn(100, dtype=torch.float64)) >= 0).all()
    # unbiased: E_{a~p}[k3] = KL(p || q) on a small categorical
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    expect = (p * P.k3_kl(p.log(), q.log())).sum()
    assert expect.item() == pytest.approx((p * (p / q).log()).sum().item(), rel=1e-12)


def gae_direct(r, v, gamma, lam):
    """Explicit sum A_t = sum_l (gamma lam)^l delta_{t+l}, V after the end = 0."""
    T = len(r)
    vv = list(v) + [0.0]
    delta = [r[i] + gamma * vv[i + 1] - vv[i] for i in range(T)]
    return [sum((gamma * lam) ** (l - t_) * delta[l] for l in range(t_, T)) for t_ in range(T)]


def test_gae_matches_direct_sum_with_padding():
    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(3, 6, generator=g, dtype=torch.float64)
    lens = [6, 4, 1]
    mask = torch.tensor([[i < n for i in range(6)] for n in lens])
    adv, ret = A.gae(r, v, mask, gamma=0.9, lam=0.8)
    for b, n in enumerate(lens):
        ref = gae_direct(r[b, :n].tolist(), v[b, :n].tolist(), 0.9, 0.8)
        assert adv[b, :n].tolist() == pytest.approx(ref, rel=1e-10)
        assert (adv[b, n:] == 0).all() and (ret[b, n:] == 0).all()
        assert ret[b, :n].tolist() == pytest.approx((adv[b, :n] + v[b, :n]).tolist())
    # lambda = 0: one-step TD; lambda = gamma = 1: reward-to-go minus V
    a0, _ = A.gae(r, v, mask, gamma=0.9, lam=0.0)
    assert a0[0, 2].item() == pytest.approx((r[0, 2] + 0.9 * v[0, 3] - v[0, 2]).item())
    a1, _ = A.gae(r, v, mask, gamma=1.0, lam=1.0)
    assert a1[1, 0].item() == pytest.approx((r[1, :4].sum() - v[1, 0]).item())


def test_kl_penalized_rewards_sum():
    lp, ref = t(-1.0, -2.0, -0.5, 0.0).view(1, 4), t(-1.5, -1.0, -0.5, 0.0).view(1, 4)
    mask = torch.tensor([[1, 1, 1, 0]])
    rew, kl = A.kl_penalized_rewards(t(3.0), lp, ref, mask, beta=0.1)
    assert rew.tolist()[0] == pytest.approx([-0.05, 0.1, 3.0, 0.0])
    assert rew.sum().item() == pytest.approx(3.0 - 0.1 * kl.sum().item())


def test_whitening():
    x = torch.randn(4, 5, dtype=torch.float64) * 3 + 2
    mask = torch.ones(4, 5)
    mask[2:, 3:] = 0
    w = masked_whiten(x, mask)
    real = w[mask.bool()]
    assert real.mean().item() == pytest.approx(0, abs=1e-9) and real.std().item() == pytest.approx(1, rel=1e-6)
    assert (w[~mask.bool()] == 0).all()


def test_grpo_outcome_advantages():
    r = t(1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 3.0, 1.0, 2.0, 0.0)
    a = A.grpo_outcome_advantages(r, 4).view(3, 4)
    ref0 = (1.0 - 0.5) / math.sqrt(1 / 3)  # unbiased std of (1,0,0,1) = sqrt(1/3)
    assert a[0, 0].item() == pytest.approx(ref0, rel=1e-3)
    assert torch.allclose(a[0].mean(), torch.zeros((), dtype=torch.float64), atol=1e-12)
    assert a[0].std().item() == pytest.approx(1.0, rel=1e-3) and a[2].std().item() == pytest.approx(1.0, rel=1e-3)
    assert (a[1] == 0).all() and torch.isfinite(a).all()  # equal rewards: zero advantage, no NaN


def test_grpo_process_advantages_suffix_sum():
    # group of 2 outputs, 5 tokens; steps end at tokens (1, 4) for o_1 and (2,) for o_2
    sr = torch.zeros(2, 5, dtype=torch.float64)
    sm = torch.zeros(2, 5, dtype=torch.bool)
    for (i, j), val in {(0, 1): 1.0, (0, 4): 0.0, (1, 2): 0.5}.items():
        sr[i, j], sm[i, j] = val, True
    adv = A.grpo_process_advantages(sr, sm, group_size=2)
    vals = [1.0, 0.0, 0.5]
    mu = sum(vals) / 3
    sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / 2)
    n = [(v - mu) / (sd + 1e-4) for v in vals]
    assert adv[0].tolist() == pytest.approx([n[0] + n[1], n[0] + n[1], n[1], n[1], n[1]], rel=1e-9)
    assert adv[1].tolist() == pytest.approx([n[2], n[2], n[2], 0, 0], abs=1e-12)
