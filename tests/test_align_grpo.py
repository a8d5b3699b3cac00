"""GRPO on a toy verifiable task with a tiny random model, plus its failure modes."""
from __future__ import annotations

import math

import pytest
import torch

from llmlab.align.grpo import GRPOConfig, GRPOTrainer, mean_reward, split_steps
from llmlab.align.rewards import arithmetic_reward, exact_match_reward, format_reward
from llmlab.align.toy import CharTokenizer, toy_sum_prompts
from llmlab.errors import UserError
from llmlab.model import ModelConfig, Transformer


def make_models(seed=0, vocab=None):
    tok = CharTokenizer()
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab or tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    pol = Transformer(cfg)
    ref = Transformer(cfg)
    ref.load_state_dict(pol.state_dict())
    return tok, pol, ref


def test_rewards():
    row = {"answer": "7"}
    assert exact_match_reward(row, "7") == 1.0 and exact_match_reward(row, "the answer is 8") == 0.0
    assert exact_match_reward(row, "<answer> 7 </answer>") == 1.0
    assert format_reward(row, "12") == 1.0 and format_reward(row, "12+") == 0.0
    assert arithmetic_reward(row, "7") == pytest.approx(1.2)


def test_grpo_30_steps_raises_reward():
    tok, pol, ref = make_models()
    prompts = toy_sum_prompts(4, seed=0)
    ref_state = {k: v.clone() for k, v in ref.state_dict().items()}
    before = mean_reward(pol, tok, prompts, arithmetic_reward, 16, 3)
    cfg = GRPOConfig(num_generations=8, prompts_per_step=4, max_steps=30, max_completion_length=3,
                     learning_rate=3e-2, beta=0.04, seed=0)
    logs = GRPOTrainer(pol, ref, tok, prompts, arithmetic_reward, cfg).train()
    after = mean_reward(pol, tok, prompts, arithmetic_reward, 16, 3)
    assert after > before + 0.1, (before, after)
    assert sum(r["reward"] for r in logs[-5:]) > sum(r["reward"] for r in logs[:5])
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in ref_state.items())  # reference frozen
    assert all(math.isfinite(r["kl"]) and r["kl"] >= 0 for r in logs)
    assert {"time_rollout", "time_reward", "time_update", "clipfrac"} <= set(logs[0])


def test_grpo_nan_reward_is_skipped_not_learned():
    tok, pol, ref = make_models()
    before = {k: v.clone() for k, v in pol.state_dict().items()}
    cfg = GRPOConfig(num_generations=4, prompts_per_step=1, max_steps=2, max_completion_length=3,
                     learning_rate=1e-2, seed=0)
    logs = GRPOTrainer(pol, ref, tok, toy_sum_prompts(2), lambda row, s: float("nan"), cfg).train()
    assert all(torch.isfinite(p).all() for p in pol.parameters())
    assert all(torch.equal(v, pol.state_dict()[k]) for k, v in before.items())  # no gradient from NaN groups
    assert math.isnan(logs[0]["reward"])


def test_grpo_multiple_iterations_and_process_supervision_run():
    tok, pol, ref = make_models()
    plus = tok.encode("+")[0]
    cfg = GRPOConfig(num_generations=4, prompts_per_step=2, max_steps=3, max_completion_length=5,
                     learning_rate=1e-2, seed=0, supervision="process", num_iterations=2)
    step_fn = lambda row, steps: [float(s.strip("+").isdigit()) for s in steps]  # noqa: E731
    logs = GRPOTrainer(pol, ref, tok, toy_sum_prompts(4), format_reward, cfg, step_reward_fn=step_fn,
                       step_end_ids={plus}).train()
    assert len(logs) == 3 and all(math.isfinite(r["loss"]) for r in logs)


def test_split_steps():
    assert split_steps([1, 9, 2, 3, 9, 4], {9}) == [(0, 1), (2, 4), (5, 5)]
    assert split_steps([1, 2], {9}) == [(0, 1)]


def test_grpo_rejects_bad_setup():
    tok, pol, _ = make_models()
    _, _, other = make_models(vocab=40)
    with pytest.raises(UserError, match="vocabularies differ"):
        GRPOTrainer(pol, other, tok, toy_sum_prompts(2), format_reward, GRPOConfig())
    with pytest.raises(ValueError):
        GRPOConfig(num_generations=1)
    with pytest.raises(UserError, match="process"):
        GRPOTrainer(pol, pol, tok, toy_sum_prompts(2), format_reward, GRPOConfig(supervision="process"))


def test_prefix_match_step_reward_and_step_ends():
    from llmlab.align.rewards import prefix_match_step_reward, step_end_token_ids
    row = {"answer": "56"}
    assert prefix_match_step_reward(row, ["5", "6"]) == [1.0, 1.0]
    assert prefix_match_step_reward(row, ["5", "7"]) == [1.0, 0.0]
    assert prefix_match_step_reward(row, ["5"]) == [0.0]  # a right prefix that stops short
    assert prefix_match_step_reward(row, ["The answer is 5", "6"]) == [0.0, 1.0]
    assert prefix_match_step_reward({"answer": "-3"}, ["-3"]) == [1.0]
    tok = CharTokenizer()
    assert step_end_token_ids(tok, "digits") == set(range(10))
    assert step_end_token_ids(tok, "newline") == set()
    with pytest.raises(ValueError):
        step_end_token_ids(tok, "words")


def test_process_supervision_with_the_builtin_step_reward_learns():
    """Digits as steps, prefix-match step rewards: the toy reward still goes up."""
    from llmlab.align.rewards import prefix_match_step_reward, step_end_token_ids
    tok, pol, ref = make_models()
    prompts = toy_sum_prompts(4, seed=0)
    before = mean_reward(pol, tok, prompts, exact_match_reward, 16, 3)
    cfg = GRPOConfig(num_generations=8, prompts_per_step=4, max_steps=30, max_completion_length=3,
                     learning_rate=3e-2, beta=0.04, seed=0, supervision="process")
    GRPOTrainer(pol, ref, tok, prompts, arithmetic_reward, cfg, step_reward_fn=prefix_match_step_reward,
                step_end_ids=step_end_token_ids(tok, "digits")).train()
    after = mean_reward(pol, tok, prompts, exact_match_reward, 16, 3)
    assert after > before + 0.05, (before, after)
