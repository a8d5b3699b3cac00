"""QLoRA (Dettmers et al. 2023): LoRA on top of a frozen base stored in 4-bit NF4.

The base Linear's weight is quantized once (nf4.py: blockwise NF4, block 64, double-quantized
absmax constants) and the fp32 copy is dropped; each forward dequantizes it on the fly and adds
the fp32 LoRA branch. Gradients flow to A and B only (the 4-bit codes are integers).

QLoRA is *not* quantization-aware training (one of the notes calls it "a technique that heavily
uses QAT"): QAT trains full-precision weights through fake-quantize nodes, whereas QLoRA freezes
an already-quantized base and trains separate high-precision low-rank weights.
(Paged optimizers, the paper's third idea, are about GPU memory spikes and do not apply on CPU.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.finetune.lora import LoraConfig, LoRAMixin, apply_lora, lora_layers
from llmlab.quant.nf4 import NF4Tensor, quantize_nf4


class QLoRALinear(nn.Module, LoRAMixin):
    def __init__(self, base: nn.Linear, cfg: LoraConfig, block: int = 64, dq_block: int = 256):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        q = quantize_nf4(base.weight, block, True, dq_block)
        self.shape, self.block, self.dq_block = q.shape, block, dq_block
        for name in ("packed", "absmax_q", "absmax_scale", "absmax_mean"):
            self.register_buffer(name, getattr(q, name))
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach().clone(), requires_grad=False)
        self._init_lora(base.in_features, base.out_features, cfg, base.weight.device)

    def nf4(self) -> NF4Tensor:
        return NF4Tensor(self.packed, self.absmax_q, self.absmax_scale, self.absmax_mean, self.shape,
                         self.block, self.dq_block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.nf4().dequantize(x.dtype), self.bias)
        return y + self.lora_branch(x).to(y.dtype)


def apply_qlora(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Quantize every targeted Linear to NF4 and put LoRA on it; the rest of the model is frozen."""
    return apply_lora(model, cfg, QLoRALinear)


def stored_weight_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes stored for the quantized base weights, bytes the same weights take in fp32)."""
    q = [m for m in lora_layers(model).values() if isinstance(m, QLoRALinear)]
    return sum(m.nf4().nbytes() for m in q), sum(4 * m.in_features * m.out_features for m in q)
