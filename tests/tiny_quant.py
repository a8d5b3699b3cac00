"""Shared by the quantization tests: correlated activations with outlier channels, and a tiny
seeded model with calibration ids, test ids and its full-precision logits."""
from __future__ import annotations

import torch


def outlier_inputs(n: int = 2048, k: int = 256, seed: int = 0) -> torch.Tensor:
    """Correlated activations with a few large channels, like a transformer's."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k // 4, generator=g) @ torch.randn(k // 4, k, generator=g) / 4
    x += 0.3 * torch.randn(n, k, generator=g)
    x[:, :4] *= 12
    return x


def tiny_quant_case(config):
    """-> (model, calib (4, 32), ids (2, 16), reference logits of ids), all from seed 0."""
    from llmlab.model.transformer import Transformer
    torch.manual_seed(0)
    model = Transformer(config).eval()
    calib = torch.randint(0, config.vocab_size, (4, 32))
    ids = torch.randint(0, config.vocab_size, (2, 16))
    return model, calib, ids, model(ids).detach()
