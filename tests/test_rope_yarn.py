"""YaRN (Peng et al. 2023) inverse frequencies and attention factor against transformers'
`_compute_yarn_parameters`, on the long-context study's own shape (head 32, T = 128) and a few others;
and the study's per-frequency split worked out by hand (docs/model.md, "YaRN at T = 128")."""
from __future__ import annotations

import math

import pytest
import torch

from llmlab.model.config import ModelConfig
from llmlab.model.rope import rope_inv_freq

transformers = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402

# (head_dim, theta, partial rotary, L, factor, extra rope parameters)
CASES = {
    "study-128x4": (32, 10000.0, 1.0, 128, 4.0, {}),
    "study-128x8": (32, 10000.0, 1.0, 128, 8.0, {}),
    "betas-16-2": (32, 10000.0, 1.0, 128, 4.0, {"beta_fast": 16, "beta_slow": 2}),
    "no-truncate": (64, 500000.0, 1.0, 4096, 4.0, {"truncate": False}),
    "partial-half": (64, 10000.0, 0.5, 2048, 16.0, {}),
    "mscale-ratio": (64, 10000.0, 1.0, 4096, 40.0, {"mscale": 1.0, "mscale_all_dim": 0.707}),
    "given-factor": (32, 10000.0, 1.0, 128, 4.0, {"attention_factor": 1.0}),
}


def _configs(head, theta, partial, L, factor, extra):
    rs = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": L, **extra}
    heads = 4
    ours = ModelConfig(vocab_size=97, hidden_size=head * heads, num_hidden_layers=1, num_attention_heads=heads,
                       max_position_embeddings=int(L * factor), rope_theta=theta, partial_rotary_factor=partial,
                       rope_scaling=dict(rs))
    hf = transformers.LlamaConfig(vocab_size=97, hidden_size=head * heads, num_hidden_layers=1,
                                  num_attention_heads=heads, max_position_embeddings=int(L * factor),
                                  rope_parameters={**rs, "rope_theta": theta, "partial_rotary_factor": partial})
    hf.partial_rotary_factor = partial
    return ours, hf


@pytest.mark.parametrize("case", list(CASES))
def test_yarn_inv_freq_and_attention_factor_match_transformers(case):
    ours, hf = _configs(*CASES[case])
    inv, att = rope_inv_freq(ours)
    ref_inv, ref_att = ROPE_INIT_FUNCTIONS["yarn"](hf, "cpu")
    assert inv.shape == ref_inv.shape
    torch.testing.assert_close(inv.float(), ref_inv.float(), rtol=1e-5, atol=0)
    assert att == pytest.approx(ref_att, rel=1e-9)


def test_study_shape_interpolates_most_frequencies():
    """T = 128, head 32, theta 1e4, s = 4: no frequency turns 32 times over 128 positions (the fastest
    turns 20.4 times), so with beta 32 / 1 the implementation's ramp runs over channel indices 0..6:
    index 0 keeps its frequency, 1-5 blend, 6-15 (10 of 16) are divided by s exactly as in PI."""
    ours, _ = _configs(*CASES["study-128x4"])
    inv, att = rope_inv_freq(ours)
    orig = 10000.0 ** (-torch.arange(0, 32, 2, dtype=torch.float64) / 32)
    kept = (inv - orig / 4) / (orig - orig / 4)  # 1: extrapolated (kept), 0: interpolated
    torch.testing.assert_close(kept, (1 - torch.arange(16, dtype=torch.float64) / 6).clamp(0, 1))
    assert 128 * orig[0] / (2 * math.pi) == pytest.approx(20.37, abs=0.01)
    assert att == pytest.approx(0.1 * math.log(4) + 1)  # on cos and sin, so on q and k: logits x att^2
