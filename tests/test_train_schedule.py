"""LR schedules against transformers' own schedulers, and their end points."""
from __future__ import annotations

import math

import pytest
import torch

from llmlab.train.schedule import lr_factor

transformers = pytest.importorskip("transformers")
from transformers import optimization as hf  # noqa: E402


def _hf_factors(make, n):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_matches_transformers_cosine_with_min_lr_rate():
    ref = _hf_factors(lambda o: hf.get_cosine_with_min_lr_schedule_with_warmup_lr_rate(o, 10, 100, min_lr_rate=0.1), 100)
    ours = [lr_factor(s, "cosine", 100, 10, 0.1) for s in range(100)]
    assert ours == pytest.approx(ref, abs=1e-12)
    assert ours[-1] == pytest.approx(0.1)  # LLaMA: ends at 10% of the peak


def test_linear_and_wsd_match_transformers_shifted_by_one():
    # HF evaluates the lambda at the number of steps taken so far and starts warmup at lr 0 (a no-op
    # first update); ours uses (step + 1), so our step s equals HF's s + 1.
    lin = _hf_factors(lambda o: hf.get_linear_schedule_with_warmup(o, 5, 50), 51)
    assert [lr_factor(s, "linear", 50, 5, 0.0) for s in range(50)] == pytest.approx(lin[1:], abs=1e-12)
    wsd = _hf_factors(lambda o: hf.get_wsd_schedule(o, 5, 10, 50, decay_type="linear", min_lr_ratio=0.1), 51)
    ours = [lr_factor(s, "wsd", 50, 5, 0.1, decay_ratio=0.2) for s in range(50)]
    assert ours[4:] == pytest.approx(wsd[5:], abs=1e-12)  # HF's WSD warmup starts at min_lr, ours at 0
    assert ours[5:39] == [1.0] * 34 and ours[-1] == pytest.approx(0.1)  # stable, then decay


def test_warmup_and_constant():
    assert [lr_factor(s, "constant", 10, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(0, "cosine", 10, 0, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 10)))
    with pytest.raises(ValueError):
        lr_factor(0, "exp", 10)
