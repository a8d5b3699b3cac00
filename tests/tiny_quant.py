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


def block_model(config, fmt_of, seed: int = 0, other=None):
    """A LLaMA whose 2-D weights are GGUF blocks (format fmt_of(name)), loaded the way `load_gguf`
    loads one: fp32 parameters = the blocks' decode, blocks attached. other(name, p), if given,
    sets each 1-D parameter in order (norm weights that are not all ones, biases)."""
    from llmlab.kernels import ggml
    from llmlab.model.transformer import Transformer
    from llmlab.quant.gguf_export import encode_blocks
    torch.manual_seed(seed)
    model = Transformer(config).eval()
    blocks = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                fmt = fmt_of(name)
                q = ggml.QuantWeight.from_gguf(fmt, encode_blocks(p, fmt), tuple(p.shape))
                p.copy_(q.dequantize())
                blocks[name] = q
            elif other is not None:
                other(name, p)
    ggml.attach(model, blocks)
    return model
