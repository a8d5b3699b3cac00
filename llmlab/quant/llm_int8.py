"""LLM.int8() (Dettmers et al. 2022, arXiv:2208.07339): vector-wise int8 matmul with a
mixed-precision decomposition for outlier features.

Vector-wise quantization: one int8 scale per row of X (per token) and one per output row of W,
so C = (A_q B_q^T) * (s_x s_w^T). Emergent outlier features (|x| > threshold = 6.0 in any token,
a few hidden dimensions from ~6.7B parameters on) would wreck the per-token scale; their columns
are taken out and multiplied in floating point:
    y = X[:, O] W[:, O]^T  +  deq(Q(X[:, ~O]) Q(W[:, ~O])^T)
The outlier set O is found per forward call, as in bitsandbytes. The weight is stored int8
(its outlier columns are dequantized from it, as bitsandbytes' inference path does).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.quant.ptq import fake_quant_per_token, rtn


class Int8Linear(nn.Module):
    def __init__(self, base: nn.Linear, threshold: float = 6.0):
        super().__init__()
        self.in_features, self.out_features, self.threshold = base.in_features, base.out_features, threshold
        self.register_buffer("weight_q", rtn(base.weight.detach().float(), bits=8, group="channel", sym=True))
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach().clone(), requires_grad=False)
        self.last_outliers = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        outlier = (x2.abs() > self.threshold).any(dim=0) if self.threshold > 0 else torch.zeros(
            self.in_features, dtype=torch.bool, device=x.device)
        self.last_outliers = int(outlier.sum())
        regular = x2.masked_fill(outlier, 0.0)  # zeroed columns contribute nothing to the int8 part
        y = F.linear(fake_quant_per_token(regular), self.weight_q)
        if self.last_outliers:
            y = y + x2[:, outlier] @ self.weight_q[:, outlier].t()
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)
