"""QAT: the STE passes gradients through round() inside the grid and stops them outside; LSQ
scale gradients match the formula; a few QAT steps beat PTQ at int4 on a toy regression."""
import torch
from torch import nn

from llmlab.quant.ptq import rtn
from llmlab.quant.qat import QATLinear, export, fake_quant_ste


def test_ste_gradient():
    w = torch.tensor([[0.3, -0.74, 2.0, -5.0]], requires_grad=True)
    s = torch.tensor([[0.25]])  # grid -7..7 * 0.25 = +-1.75: the last two are clipped
    y = fake_quant_ste(w, s, 4, "tensor")
    assert y.tolist() == [[0.25, -0.75, 1.75, -1.75]]
    y.sum().backward()
    assert w.grad.tolist() == [[1.0, 1.0, 0.0, 0.0]]


def test_lsq_scale_gradient():
    w = torch.tensor([[0.3, -0.74, 2.0, -5.0]])
    s = torch.tensor([[0.25]], requires_grad=True)
    fake_quant_ste(w, s, 4, "tensor").sum().backward()
    v = w / 0.25
    expect = sum(float(torch.round(x) - x) if abs(x) <= 7 else (7.0 if x > 0 else -7.0) for x in v[0])
    assert abs(float(s.grad) - expect) < 1e-5


def test_qat_beats_ptq_at_int4():
    torch.manual_seed(0)
    teacher = nn.Linear(64, 32)
    # correlated inputs (as in a network): rounding errors can be compensated across weights,
    # which RTN cannot do and training through the quantizer can
    x = torch.randn(2048, 16) @ torch.randn(16, 64) / 4 + 0.1 * torch.randn(2048, 64)
    y = teacher(x).detach()
    ptq_w = rtn(teacher.weight.detach(), 4, 32, True)
    ptq_err = float(((x @ ptq_w.t() + teacher.bias - y) ** 2).mean().detach())
    errs = {}
    for learn in (False, True):
        m = QATLinear(teacher, 4, 32, learn_scale=learn)
        opt = torch.optim.Adam(m.parameters(), lr=3e-4)
        for _ in range(200):
            opt.zero_grad()
            ((m(x) - y) ** 2).mean().backward()
            opt.step()
        seq = nn.Sequential(m)
        export(seq)
        assert type(seq[0]) is nn.Linear
        errs[learn] = float(((seq[0](x) - y) ** 2).mean().detach())
        assert len(torch.unique(seq[0].weight[0, :32])) <= 15  # still on an int4 grid
    assert errs[False] < 0.95 * ptq_err and errs[True] < 0.75 * ptq_err, (errs, ptq_err)
