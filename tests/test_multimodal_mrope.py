"""M-RoPE against transformers' Qwen2-VL rotary embedding; positions by hand; text-only reduces to RoPE."""
from __future__ import annotations

import pytest
import torch

from llmlab.multimodal.mrope import apply_rotary, mrope_cos_sin, mrope_position_ids


def test_positions_by_hand():
    p = mrope_position_ids([("text", 2), ("image", 2, 3), ("text", 2)])
    assert p[:, :2].tolist() == [[0, 1], [0, 1], [0, 1]]
    assert p[0, 2:8].tolist() == [2] * 6  # one temporal index for the whole image
    assert p[1, 2:8].tolist() == [2, 2, 2, 3, 3, 3] and p[2, 2:8].tolist() == [2, 3, 4, 2, 3, 4]
    assert p[:, 8:].tolist() == [[5, 6]] * 3  # text resumes at max + 1


@pytest.mark.slow  # importing transformers' Qwen2-VL modelling takes 10-45 s on a loaded machine
def test_cos_sin_equal_transformers_qwen2vl():
    mod = pytest.importorskip("transformers.models.qwen2_vl.modeling_qwen2_vl")
    cfg_mod = pytest.importorskip("transformers.models.qwen2_vl.configuration_qwen2_vl")
    cfg = cfg_mod.Qwen2VLTextConfig(hidden_size=64, num_attention_heads=2, num_key_value_heads=2,
                                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                     "mrope_section": [4, 6, 6]})
    ref = mod.Qwen2VLRotaryEmbedding(cfg)
    pos = mrope_position_ids([("text", 3), ("image", 3, 4), ("text", 5)]).unsqueeze(1).expand(3, 2, -1)
    x = torch.randn(2, 2, pos.shape[-1], 32)
    cos_r, sin_r = ref(x, pos)
    cos, sin = mrope_cos_sin(pos, head_dim=32, theta=10000.0, sections=(4, 6, 6))
    assert torch.allclose(cos, cos_r, atol=1e-6) and torch.allclose(sin, sin_r, atol=1e-6)
    q_ref, _ = mod.apply_rotary_pos_emb(x, x, cos_r, sin_r)
    assert torch.allclose(apply_rotary(x, cos, sin), q_ref, atol=1e-6)


def test_text_only_is_plain_rope():
    from llmlab.model.config import ModelConfig
    from llmlab.model.rope import RotaryEmbedding
    rope = RotaryEmbedding(ModelConfig(hidden_size=64, num_attention_heads=2, rope_theta=10000.0))
    pos = mrope_position_ids([("text", 7)])
    cos, sin = mrope_cos_sin(pos.unsqueeze(1), head_dim=32, sections=(4, 6, 6))
    cos_ref, sin_ref = rope(torch.arange(7), torch.float32)  # llmlab's 1-D RoPE (tested against HF LLaMA)
    # llmlab folds rotate_half's sign into its sine table: (-sin, sin)
    signed = torch.cat([-sin[0][:, :16], sin[0][:, 16:]], dim=-1)
    assert torch.allclose(cos[0], cos_ref, atol=1e-6) and torch.allclose(signed, sin_ref, atol=1e-6)
