"""EWC and the replay buffer (llmlab.finetune.continual) against hand computations."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from llmlab.finetune.continual import EWC, ReplayBuffer, fisher_diagonal


def _mse(model, ex):
    x, y = ex
    return 0.5 * (model(x).squeeze() - y) ** 2


def test_fisher_is_the_mean_squared_per_example_gradient():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 1)
    data = [(torch.randn(3), torch.randn(())) for _ in range(5)]
    f = fisher_diagonal(lin, data, _mse)
    w, b = lin.weight.detach()[0], lin.bias.detach()[0]
    gw = [((w @ x + b) - y) * x for x, y in data]  # d/dw of (w.x + b - y)^2 / 2
    gb = [((w @ x + b) - y) for x, y in data]
    assert torch.allclose(f["weight"][0], torch.stack([g ** 2 for g in gw]).mean(0), atol=1e-6)
    assert torch.allclose(f["bias"], torch.stack([g ** 2 for g in gb]).mean(0).reshape(1), atol=1e-6)
    assert lin.weight.grad is None  # leaves no gradients behind


def test_ewc_penalty_and_its_gradient():
    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0]]))
    ewc = EWC(lin, {"weight": torch.tensor([[4.0, 0.5]])}, lam=2.0)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, 0.0]]))
    pen = ewc.penalty(lin)
    assert float(pen) == pytest.approx(0.5 * 2.0 * (4.0 * 1 + 0.5 * 4))  # lam/2 sum F d^2 = 6
    pen.backward()
    assert torch.allclose(lin.weight.grad, torch.tensor([[2.0 * 4.0 * 1, 2.0 * 0.5 * -2]]))  # lam F d


def test_ewc_keeps_the_important_weight_for_the_old_task():
    torch.manual_seed(0)
    xa = torch.randn(64, 2) * torch.tensor([1.0, 0.0])  # task A only uses input 0
    ya = 3 * xa[:, 0] + 0.5 * torch.randn(64)  # noise: the empirical Fisher is 0 at a perfect fit
    xb = torch.randn(64, 2)
    yb = -3 * xb[:, 0] + 2 * xb[:, 1]  # task B wants input 0's weight flipped

    def fit(model, x, y, steps, ewc=None):
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(steps):
            loss = ((model(x).squeeze(-1) - y) ** 2).mean() / 2
            if ewc is not None:
                loss = loss + ewc.penalty(model)
            opt.zero_grad()
            loss.backward()
            opt.step()

    def old_loss(m):
        return float(((m(xa).squeeze(-1) - ya) ** 2).mean())
    results = {}
    for lam in (0.0, 100.0):
        torch.manual_seed(1)
        m = torch.nn.Linear(2, 1, bias=False)
        fit(m, xa, ya, 150)
        ewc = EWC(m, fisher_diagonal(m, [(xa[i], ya[i]) for i in range(64)], _mse), lam) if lam else None
        fit(m, xb, yb, 150, ewc)
        results[lam] = (old_loss(m), float(m.weight[0, 1]))
    assert results[100.0][0] < results[0.0][0] / 2  # at least half the forgetting kept away
    assert results[100.0][1] == pytest.approx(results[0.0][1], abs=0.2)  # the unimportant weight still learns B


def test_reservoir_keeps_each_item_with_probability_k_over_n():
    counts = Counter()
    for seed in range(2000):
        buf = ReplayBuffer(5, seed)
        for i in range(20):
            buf.add(i)
        counts.update(buf.items)
        assert len(buf.items) == 5 and buf.seen == 20
    assert all(abs(counts[i] / 2000 - 0.25) < 0.04 for i in range(20))
    assert ReplayBuffer(3, 0).sample(2) == []
