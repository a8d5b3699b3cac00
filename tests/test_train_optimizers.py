"""The written-out optimizers against their references, step by step (digest-001 sec. 2.9)."""
from __future__ import annotations

import pytest
import torch

from llmlab.errors import UserError
from llmlab.train.optim import build_optimizer
from llmlab.train.optimizers import Adafactor, Adam, Adamax, AdamW


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(7, 5, generator=g), torch.randn(5, generator=g), torch.randn(2, 3, 4, generator=g)]


def _run_pair(ours_cls, ref_cls, kw, steps=10, ours_kw=None, ref_kw=None):
    a = [p.clone().requires_grad_() for p in _params()]
    b = [p.clone().requires_grad_() for p in _params()]
    oa, ob = ours_cls(a, **kw, **(ours_kw or {})), ref_cls(b, **kw, **(ref_kw or {}))
    g = torch.Generator().manual_seed(1)
    worst = 0.0
    for _ in range(steps):
        for x, y in zip(a, b):  # gradients of varying size, shared by both
            grad = torch.randn(x.shape, generator=g) * float(torch.rand((), generator=g) * 10)
            x.grad, y.grad = grad.clone(), grad.clone()
        oa.step()
        ob.step()
        worst = max(worst, max(float((x - y).detach().abs().max()) for x, y in zip(a, b)))
    return worst


@pytest.mark.parametrize("ours,ref,kw", [
    (Adam, torch.optim.Adam, dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8)),
    (Adam, torch.optim.Adam, dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),  # L2
    (AdamW, torch.optim.AdamW, dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)),
    (Adamax, torch.optim.Adamax, dict(lr=2e-2, betas=(0.9, 0.999), eps=1e-8)),
    (Adamax, torch.optim.Adamax, dict(lr=2e-2, betas=(0.5, 0.9), eps=1e-3, weight_decay=0.05)),
])
def test_matches_torch_within_1e_6_over_10_steps(ours, ref, kw):
    assert _run_pair(ours, ref, kw) <= 1e-6


def _hf_adafactor():
    try:  # a torchvision that does not match torch breaks transformers' imports: do without it
        import torchvision  # noqa: F401
    except Exception:
        import transformers.utils as tu
        import transformers.utils.import_utils as iu
        iu.is_torchvision_available = tu.is_torchvision_available = lambda: False
    from transformers.optimization import Adafactor as HFAdafactor
    return HFAdafactor


@pytest.mark.parametrize("kw", [
    dict(),  # relative step 1/sqrt(t), parameter scale RMS(theta), no first moment
    dict(lr=1e-2, relative_step=False, scale_parameter=False),
    dict(lr=3e-3, relative_step=False, beta1=0.9, weight_decay=0.1, clip_threshold=0.5),
    dict(warmup_init=True, decay_rate=-0.6),
])
def test_adafactor_matches_transformers(kw):
    HFAdafactor = _hf_adafactor()
    assert _run_pair(Adafactor, HFAdafactor, kw) <= 1e-6


def test_adafactor_keeps_factored_second_moments():
    w = torch.zeros(64, 32, requires_grad=True)
    opt = Adafactor([w])
    w.grad = torch.randn(64, 32)
    opt.step()
    st = opt.state[w]
    assert st["exp_avg_sq_row"].shape == (64,) and st["exp_avg_sq_col"].shape == (32,)
    assert "exp_avg_sq" not in st and "exp_avg" not in st  # 96 numbers of state, not 2 x 2048


def test_adamw_decay_is_decoupled():
    w = torch.ones(4, requires_grad=True)
    opt = AdamW([w], lr=0.1, weight_decay=0.5)
    w.grad = torch.zeros(4)
    opt.step()  # zero gradient: only the decay acts, theta *= 1 - lr * wd
    assert torch.allclose(w, torch.full((4,), 0.95))
    a, b = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    oa, ob = Adam([a], lr=0.1, weight_decay=0.5), AdamW([b], lr=0.1, weight_decay=0.5)
    for g in ([1.0, 100.0], [0.01, 50.0]):  # Adam+L2 is not AdamW when gradient sizes vary
        a.grad, b.grad = torch.tensor(g), torch.tensor(g)
        oa.step()
        ob.step()
    assert not torch.allclose(a, b, atol=1e-3)


def test_bias_correction_makes_the_first_step_lr_sized():
    w = torch.zeros(1, requires_grad=True)
    opt = Adam([w], lr=0.1, betas=(0.9, 0.999))
    w.grad = torch.tensor([1e-3])
    opt.step()  # m^ = g, v^ = g^2: the step is lr * sign(g) whatever the gradient's size
    assert float(w.detach()) == pytest.approx(-0.1, rel=1e-4)


def test_build_optimizer_by_name():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    for name, cls in (("adam", Adam), ("adamax", Adamax), ("adafactor", Adafactor),
                      ("adamw", torch.optim.AdamW)):
        assert type(build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), 1e-8, optim=name)) is cls
    with pytest.raises(UserError):
        build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), 1e-8, optim="sgd")
