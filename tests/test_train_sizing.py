"""The depth dial and the scaling-law helpers."""
from __future__ import annotations

import pytest

from llmlab.errors import UserError
from llmlab.model import Transformer
from llmlab.train.sizing import PRESETS, chinchilla_loss, chinchilla_optimal, deepseek_batch_lr, preset, size_model


def test_chinchilla_optimal_uses_the_derived_not_the_swapped_exponents():
    n, d = chinchilla_optimal(5.76e23)  # Chinchilla's own budget
    assert n == pytest.approx(3.22e10, rel=0.01) and d == pytest.approx(2.98e12, rel=0.01)
    assert 6 * n * d == pytest.approx(5.76e23, rel=1e-9)
    n2, d2 = chinchilla_optimal(4 * 5.76e23)  # N grows as C^0.45, D as C^0.55
    assert n2 / n == pytest.approx(4 ** (0.28 / 0.62), rel=1e-9) and d2 / d == pytest.approx(4 ** (0.34 / 0.62), rel=1e-9)
    # it is the minimum of the loss along C = 6ND
    for f in (0.8, 1.25):
        assert chinchilla_loss(n * f, 5.76e23 / (6 * n * f)) > chinchilla_loss(n, d)


def test_depth_dial_derives_everything():
    s4, s8 = size_model(4, 1000, 128), size_model(8, 1000, 128)
    assert (s4.model.hidden_size, s4.model.num_attention_heads, s4.model.head_dim) == (256, 4, 64)
    assert s4.params == Transformer(s4.model).num_params()
    assert s4.tokens == int(20 * s4.params) and s4.compute == 6 * s4.params * s4.tokens
    assert s8.learning_rate < s4.learning_rate and s8.batch_tokens > s4.batch_tokens  # DeepSeek fits
    assert s4.batch_tokens % 128 == 0 and s4.max_steps == s4.tokens // s4.batch_tokens
    b, lr = deepseek_batch_lr(1e20)
    assert b == pytest.approx(0.2920 * 1e20 ** 0.3271) and lr == pytest.approx(0.3118 * 1e20 ** -0.125)
    with pytest.raises(UserError):
        size_model(0, 1000, 128)


def test_presets():
    for name in PRESETS:
        s, over = preset(name, 8192, world_size=2)
        micro = over["per_device_train_batch_size"] * over["max_length"] * 2
        if "gradient_accumulation_steps" in PRESETS[name]:  # a preset's explicit batch wins over the fit
            assert over["gradient_accumulation_steps"] == PRESETS[name]["gradient_accumulation_steps"]
        else:
            assert over["gradient_accumulation_steps"] * micro == s.batch_tokens
        for key in ("learning_rate", "max_steps"):
            assert over[key] == PRESETS[name].get(key, getattr(s, key))
        assert over["warmup_steps"] == max(1, over["max_steps"] // 50)
    with pytest.raises(UserError, match="unknown preset"):
        preset("huge", 100)
