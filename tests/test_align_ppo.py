"""PPO end to end on a tiny random model with a verifiable toy reward, plus early stop and ptx."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from llmlab.align.grpo import mean_reward
from llmlab.align.ppo import PPOConfig, PPOTrainer, reward_model_score_fn, verifiable_score_fn
from llmlab.align.reward_model import RewardModel, RewardScorer
from llmlab.align.rewards import arithmetic_reward
from llmlab.align.toy import CharTokenizer, toy_sum_prompts
from llmlab.errors import UserError
from llmlab.model import ModelConfig, Transformer

TOK = CharTokenizer()


def roles(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=TOK.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=32)
    pol = Transformer(cfg)
    return pol, copy.deepcopy(pol), RewardModel(copy.deepcopy(pol))


@pytest.mark.slow  # ~15 s on one core
def test_ppo_raises_toy_reward_with_reference_frozen():
    pol, ref, critic = roles()
    ref_state = {k: v.clone() for k, v in ref.state_dict().items()}
    prompts = toy_sum_prompts(4, seed=0)
    before = mean_reward(pol, TOK, prompts, arithmetic_reward, 16, 3)
    cfg = PPOConfig(rollout_batch_size=16, mini_batch_size=8, ppo_epochs=2, max_steps=12, max_completion_length=3,
                    learning_rate=1e-2, kl_coef=0.02, vf_coef=0.5, seed=0)
    logs = PPOTrainer(pol, ref, critic, TOK, prompts, verifiable_score_fn(arithmetic_reward), cfg).train()
    after = mean_reward(pol, TOK, prompts, arithmetic_reward, 16, 3)
    assert after > before + 0.08, (before, after)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in ref_state.items())
    for key in ("reward", "kl", "entropy", "clipfrac", "vf_loss", "time_rollout", "time_reward", "time_update"):
        assert key in logs[0] and math.isfinite(logs[-1][key])
    assert logs[0]["updates"] == 2 * 2


def test_ppo_kl_early_stop_limits_updates():
    pol, ref, critic = roles()
    cfg = PPOConfig(rollout_batch_size=8, mini_batch_size=2, ppo_epochs=4, max_steps=2, max_completion_length=3,
                    learning_rate=5e-2, target_kl=1e-9, seed=0)
    logs = PPOTrainer(pol, ref, critic, TOK, toy_sum_prompts(4), verifiable_score_fn(arithmetic_reward), cfg).train()
    assert all(r["early_stop"] for r in logs)
    assert all(r["updates"] < 16 for r in logs)  # without the stop: 4 epochs x 4 mini-batches


def test_ppo_ptx_and_reward_model_scores():
    pol, ref, critic = roles()
    rm = RewardModel(copy.deepcopy(pol)).eval()
    cfg = PPOConfig(rollout_batch_size=4, mini_batch_size=4, ppo_epochs=1, max_steps=2, max_completion_length=3,
                    learning_rate=1e-3, ptx_coef=0.5, ent_coef=0.01, seed=0)
    logs = PPOTrainer(pol, ref, critic, TOK, toy_sum_prompts(4), reward_model_score_fn(RewardScorer(rm, TOK)), cfg,
                      ptx_texts=["1+1=2", "2+2=4", "3+4=7"]).train()
    assert all(math.isfinite(r["ptx_loss"]) for r in logs)
    with pytest.raises(UserError, match="ptx"):
        PPOTrainer(pol, ref, critic, TOK, toy_sum_prompts(4), reward_model_score_fn(RewardScorer(rm, TOK)), cfg)


def test_ppo_nan_reward_gives_no_gradient():
    pol, ref, critic = roles()
    before = {k: v.clone() for k, v in pol.state_dict().items()}
    cfg = PPOConfig(rollout_batch_size=4, mini_batch_size=4, ppo_epochs=1, max_steps=1, max_completion_length=3,
                    learning_rate=1e-2, seed=0, kl_coef=0.0)
    logs = PPOTrainer(pol, ref, critic, TOK, toy_sum_prompts(4), lambda rows, texts: torch.full((len(rows),), float("nan")),
                      cfg).train()
    assert math.isnan(logs[0]["reward"])
    assert all(torch.isfinite(p).all() for p in pol.parameters())
    assert all(torch.equal(v, pol.state_dict()[k]) for k, v in before.items())
