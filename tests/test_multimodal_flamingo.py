"""Flamingo: with tanh gates at 0 the logits equal the frozen LM's exactly; opening a gate makes
them depend on the image; at init only the gates get gradient; the resampler's output size is
fixed whatever the number of patches."""
from __future__ import annotations

import torch

from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.multimodal.flamingo import Flamingo, PerceiverResampler
from llmlab.multimodal.vit import ViTConfig, VisionTransformer


def _model(every=1):
    torch.manual_seed(0)
    lm = Transformer(ModelConfig(vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=64)).eval()
    vit = VisionTransformer(ViTConfig(image_size=8, patch_size=2, in_chans=3, embed_dim=16, depth=1, num_heads=2))
    return Flamingo(vit, lm, num_latents=4, every=every)


def test_gates_at_zero_leave_the_lm_unchanged():
    m = _model(every=2)
    assert len(m.xattn) == 2
    ids, images = torch.randint(0, 97, (2, 9)), torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(m(ids, images), m.lm(ids))
        m.xattn[1].attn_gate.fill_(0.5)
        a, b = m(ids, images), m(ids, torch.rand(2, 3, 8, 8))
    assert (a - m.lm(ids)).abs().max() > 1e-4 and (a - b).abs().max() > 1e-6  # the image now matters


def test_only_gates_get_gradient_at_init():
    m = _model()
    ids = torch.randint(0, 97, (2, 6))
    m(ids, torch.rand(2, 3, 8, 8))[:, :-1].sum().backward()
    blk = m.xattn[0]
    assert blk.attn_gate.grad.abs() > 0 and blk.ff_gate.grad.abs() > 0  # d tanh(a)/da = 1 at a = 0
    assert blk.attn.to_q.weight.grad.abs().sum() == 0  # scaled by tanh(0) = 0
    assert all(p.grad is None for p in m.lm.parameters())


def test_resampler_fixed_number_of_tokens():
    r = PerceiverResampler(16, depth=2, num_latents=5, heads=2)
    assert r(torch.randn(3, 7, 16)).shape == (3, 5, 16) and r(torch.randn(3, 40, 16)).shape == (3, 5, 16)
