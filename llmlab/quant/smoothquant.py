"""SmoothQuant W8A8 (Xiao et al. 2022, arXiv:2211.10438) and plain W8A8.

W8A8: weights int8 per output channel (symmetric), activations int8 per token, quantized on
the fly (`ptq.quantize_per_token`). LLM activations have a few channels with outliers ~100x
the rest, so one scale per token wastes most of the int8 range on them. SmoothQuant migrates
the difficulty to the weights with a per-input-channel factor
    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha),   x' = x / s,   W' = W diag(s)
(alpha = migration strength, 0.5 by default; max|W_j| over every Linear reading that input),
which is exact before quantization and folded into the preceding norm at deployment. Here the
division x / s is an explicit multiply by 1/s; the int8 matmul is simulated in fp32 (each code
product is exact; the accumulation is fp32).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.quant.ptq import fake_quant_per_token, rtn


def smooth_scales(act_absmax: torch.Tensor, ws: list[torch.Tensor], alpha: float = 0.5) -> torch.Tensor:
    w_max = torch.stack([w.abs().amax(dim=0) for w in ws]).amax(dim=0)
    s = act_absmax.clamp_min(1e-5).pow(alpha) / w_max.clamp_min(1e-5).pow(1 - alpha)
    return s.clamp_min(1e-5)


class W8A8Linear(nn.Module):
    """y = Q8_token(x / s) @ Q8_channel(W diag(s))^T + b."""

    def __init__(self, base: nn.Linear, s: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        w = base.weight.detach().float()
        s = torch.ones(self.in_features) if s is None else s.float()
        self.register_buffer("inv_s", 1.0 / s)
        self.register_buffer("weight_q", rtn(w * s, bits=8, group="channel", sym=True))
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(fake_quant_per_token(x * self.inv_s), self.weight_q, self.bias)
