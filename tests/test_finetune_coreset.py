"""Coreset selection: k-center greedy by hand on a line, within 2x of the brute-force optimal radius,
and better coverage than a random subset of the same size."""
from __future__ import annotations

import itertools

import pytest
import torch

from llmlab.errors import UserError
from llmlab.finetune.instruct.coreset import covering_radius, instruction_texts, k_center_greedy, select, task_quotas


def test_greedy_by_hand():
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [20.0]])
    # from 0: farthest is 20, then the point farthest from {0, 20}: 10 (distance 10)
    assert k_center_greedy(x, 3, first=0) == [0, 5, 3]
    assert covering_radius(x, [0, 5, 3]) == 2.0  # point 2 is 2 from centre 0
    with pytest.raises(UserError):
        k_center_greedy(x, 7)


def test_two_approximation_against_brute_force():
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        x = torch.randn(11, 2, generator=g)
        best = min(covering_radius(x, list(c)) for c in itertools.combinations(range(11), 3))
        greedy = covering_radius(x, k_center_greedy(x, 3, seed=trial))
        assert best <= greedy <= 2 * best + 1e-6


def test_coreset_covers_better_than_random():
    g = torch.Generator().manual_seed(1)
    # 5 clusters of very different sizes: random draws mostly from the big one
    sizes = [400, 20, 20, 20, 20]
    x = torch.cat([torch.randn(s, 8, generator=g) * 0.1 + 3 * torch.randn(1, 8, generator=g) for s in sizes])
    recs = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]} for i in range(len(x))]
    embed = lambda texts: x[[int(t[1:]) for t in texts]]  # noqa: E731
    core = select(recs, 5, "kcenter", embed=embed)
    clusters = {int(r["messages"][0]["content"][1:]) // 1 for r in core}
    bounds = [0, 400, 420, 440, 460, 480]
    assert {next(j for j in range(5) if bounds[j] <= i < bounds[j + 1]) for i in clusters} == set(range(5))
    rnd_idx = [int(r["messages"][0]["content"][1:]) for r in select(recs, 5, "random", seed=0)]
    assert covering_radius(x, [int(r["messages"][0]["content"][1:]) for r in core]) < covering_radius(x, rnd_idx)
    assert instruction_texts([{"prompt": "p"}, {"instruction": "i"}]) == ["p", "i"]
    with pytest.raises(UserError):
        select(recs, 5, "nope")


def test_per_task_quotas_and_kcenter_within_each_task():
    # 7 / 2 / 1 records, k = 5: exact shares 3.5 / 1.0 / 0.5 -> 3 / 1 / 0, one left for the largest remainder
    tasks = ["a"] * 7 + ["b"] * 2 + ["c"]
    assert task_quotas(tasks, 5) == {"a": 4, "b": 1, "c": 0}
    assert task_quotas(tasks, 10) == {"a": 7, "b": 2, "c": 1}
    assert sum(task_quotas(["x", "y", "z"], 2).values()) == 2
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [20.0], [21.0], [100.0], [101.0], [500.0]])
    recs = [{"task": t, "messages": [{"role": "user", "content": f"q{i}"}]} for i, t in enumerate(tasks)]
    embed = lambda texts: x[[int(t[1:]) for t in texts]]  # noqa: E731
    got = [int(r["messages"][0]["content"][1:]) for r in select(recs, 5, "kcenter_task", seed=3, embed=embed)]
    a_only = k_center_greedy(x[:7], 4, seed=3)
    b_only = k_center_greedy(x[7:9], 1, seed=3)
    assert got == a_only + [7 + i for i in b_only]
    # plain k-center spends centres on the far outliers of the small tasks instead
    plain = [int(r["messages"][0]["content"][1:]) for r in select(recs, 5, "kcenter", seed=3, embed=embed)]
    assert 9 in plain and 9 not in got
    with pytest.raises(UserError, match="task"):
        select([{"messages": []}] * 3, 2, "kcenter_task", embed=lambda t: torch.zeros(len(t), 1))
