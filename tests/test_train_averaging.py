"""Tail averaging (llmlab.train.averaging) against hand-computed means."""
from __future__ import annotations

import torch
from torch import nn

from llmlab.train.averaging import TailAverage, average_start


def test_average_start():
    assert average_start(1600, 0.5) == 800
    assert average_start(1600, 0.0) == 1600
    assert average_start(1600, 1.0) == 0
    assert average_start(6, 0.25) == 4  # round(1.5) = 2 steps averaged


def test_tail_average_hand_computed():
    """A parameter at 1, 2, 4, 8 after steps 1-4, averaging after step 2: (4 + 8) / 2 = 6; a frozen
    parameter is not averaged; the model gets the mean only when asked."""
    m = nn.Linear(1, 1)
    m.bias.requires_grad_(False)
    avg = TailAverage(m, start=2)
    assert set(avg.mean) == {"weight"}
    for step, v in enumerate([1.0, 2.0, 4.0, 8.0], start=1):
        with torch.no_grad():
            m.weight.fill_(v)
        avg.update(step)
    assert avg.n == 2 and m.weight.item() == 8.0
    avg.copy_to_model()
    assert m.weight.item() == 6.0


def test_tail_average_bf16_parameter_kept_in_fp32():
    """The running mean is fp32 even for a bf16 parameter: 1 + 2^-8 is not a bf16 number."""
    p = nn.Parameter(torch.ones(1, dtype=torch.bfloat16))
    m = nn.Module()
    m.p = p
    avg = TailAverage(m, start=0)
    for v in (1.0, 1.0 + 2 ** -7):  # both exact in bf16 (7 stored mantissa bits)
        with torch.no_grad():
            p.fill_(v)
        avg.update(avg.n + 1)
    assert avg.mean["p"].dtype == torch.float32 and avg.mean["p"].item() == 1.0 + 2 ** -8
