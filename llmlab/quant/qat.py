"""Quantization-aware training: fake quantization with the straight-through estimator.

Forward, each weight goes through quantize-dequantize (the int grid of `ptq`, symmetric, per
group); backward, round() is treated as the identity (STE, Bengio et al. 2013), so the fp32
"shadow" weights keep learning while the loss sees the quantized ones:
    w_q = s * clamp(round(w / s), -Qn, Qp)
    dL/dw = dL/dw_q * 1[-Qn <= w / s <= Qp]    (clipped STE: no gradient outside the grid)
Learned scales (LSQ, Esser et al. 2019, arXiv:1902.08153): s is a parameter with gradient
    dL/ds = dL/dw_q * (round(w/s) - w/s)  inside the grid,  -Qn or Qp at the clamps,
scaled by g = 1 / sqrt(numel_per_scale * Qp) for stable steps. After training, `export` folds the
fake-quant into plain weights (exactly what an int kernel would compute).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.quant.ptq import check_granularity, qparams


def granule_view(w: torch.Tensor, group: int | str) -> torch.Tensor:
    """w (rows, k) -> (n_granules, size), one scale per granule: 'tensor' one granule, 'channel'
    (or -1) one per row, an int g groups of g consecutive weights of a row (g must divide k)."""
    check_granularity(w, group)
    if group == "tensor":
        return w.reshape(1, -1)
    return w if group in ("channel", -1) else w.reshape(-1, group)


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


def fake_quant_ste(w: torch.Tensor, scale: torch.Tensor, bits: int, group: int,
                   grad_scale: float = 1.0) -> torch.Tensor:
    """Symmetric per-group fake quantization, differentiable in w (clipped STE) and scale (LSQ)."""
    qp = 2 ** (bits - 1) - 1
    g = granule_view(w, group)
    s = scale * grad_scale + (scale - scale * grad_scale).detach()  # LSQ gradient scaling
    v = torch.clamp(g / s, -qp, qp)
    return (_RoundSTE.apply(v) * s).reshape(w.shape)


class QATLinear(nn.Module):
    """A Linear trained through int`bits` fake quantization (per group of `group` inputs)."""

    def __init__(self, base: nn.Linear, bits: int = 4, group: int = 32, learn_scale: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.bits, self.group = base.in_features, base.out_features, bits, group
        self.weight = nn.Parameter(base.weight.detach().clone())
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach().clone())
        s, _ = qparams(granule_view(self.weight.detach(), group), bits, True)
        self.scale = nn.Parameter(s, requires_grad=learn_scale)
        n = group if isinstance(group, int) and group > 0 else base.in_features
        self.grad_scale = 1.0 / (n * (2 ** (bits - 1) - 1)) ** 0.5 if learn_scale else 1.0

    def quantized_weight(self) -> torch.Tensor:
        if not self.scale.requires_grad:  # absmax scale follows the weights
            s, _ = qparams(granule_view(self.weight.detach(), self.group), self.bits, True)
            self.scale.data.copy_(s)
        return fake_quant_ste(self.weight, self.scale, self.bits, self.group, self.grad_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)


def prepare_qat(model, bits: int = 4, group: int = 32, learn_scale: bool = False) -> int:
    """Swap every block Linear for a QATLinear; -> how many."""
    from llmlab.quant.apply import _set_module
    from llmlab.quant.calibrate import quantizable_linears
    lins = quantizable_linears(model)
    for n, m in lins.items():
        _set_module(model, n, QATLinear(m, bits, group, learn_scale))
    return len(lins)


@torch.no_grad()
def export(model) -> None:
    """QATLinear -> nn.Linear holding the quantized weights."""
    from llmlab.quant.apply import _set_module
    for n, m in list(model.named_modules()):
        if isinstance(m, QATLinear):
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            lin.weight.data = m.quantized_weight().detach().clone()
            if m.bias is not None:
                lin.bias.data = m.bias.detach().clone()
            _set_module(model, n, lin)
