"""DPO/IPO/KTO/ORPO through the shared loop and the reward model, on tiny random models."""
from __future__ import annotations

import math
import random

import pytest
import torch

from llmlab.align.preference_trainer import PreferenceConfig, PreferenceTrainer, logprob_preference_accuracy
from llmlab.align.reward_model import RewardConfig, RewardModel, pairwise_accuracy, train_reward_model
from llmlab.align.toy import CharTokenizer
from llmlab.errors import UserError
from llmlab.model import ModelConfig, Transformer

TOK = CharTokenizer()


def tiny(seed=0, vocab=None):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=vocab or TOK.vocab_size, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32))


def toy_rows(n, seed, k=2):
    """'a+b=' -> the right sum (chosen) vs a wrong digit; k > 2 gives a ranking, correct first."""
    rng, out = random.Random(seed), []
    for _ in range(n):
        a, b = rng.randint(0, 4), rng.randint(0, 4)
        wrong = [str(w) for w in rng.sample([x for x in range(10) if x != a + b], k - 1)]
        if k == 2:
            out.append({"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": wrong[0]})
        else:
            out.append({"prompt": f"{a}+{b}=", "completions": [str(a + b)] + wrong})
    return out


def pair(seed=0):
    pol, ref = tiny(seed), tiny(seed)
    return pol, ref


@pytest.mark.parametrize("loss_type", ["dpo", "ipo", "kto", "orpo"])
def test_preference_loop_learns(loss_type):
    pol, ref = pair()
    rows = toy_rows(32, 0)
    cfg = PreferenceConfig(loss_type=loss_type, beta=0.5 if loss_type != "ipo" else 0.5, learning_rate=3e-3,
                           num_train_epochs=3, per_device_train_batch_size=8)
    tr = PreferenceTrainer(pol, ref if loss_type != "orpo" else None, TOK, rows, cfg)
    before = logprob_preference_accuracy(pol, TOK, rows)
    first = tr.loss(list(range(8)))[0].item()
    if loss_type == "dpo":
        assert first == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    logs = tr.train()
    assert all(math.isfinite(r["loss"]) for r in logs) and all(r["applied"] for r in logs)
    assert sum(r["loss"] for r in logs[-3:]) < sum(r["loss"] for r in logs[:3])
    if loss_type != "orpo":
        assert tr.ref_forward_calls == math.ceil(len(tr.items) / 8)  # reference run once, then cached
        acc = logprob_preference_accuracy(pol, TOK, rows, ref=ref)
        assert acc > 0.8
    after = logprob_preference_accuracy(pol, TOK, rows)
    assert after > 0.7 and after > before + 0.2, (before, after)


def test_dpo_margin_rises_and_reference_is_untouched():
    pol, ref = pair()
    ref_state = {k: v.clone() for k, v in ref.state_dict().items()}
    tr = PreferenceTrainer(pol, ref, TOK, toy_rows(16, 1), PreferenceConfig(learning_rate=3e-3, beta=0.5,
                                                                         per_device_train_batch_size=16, max_steps=5))
    logs = tr.train()
    assert logs[-1]["margin"] > logs[0]["margin"] and logs[0]["margin"] == pytest.approx(0, abs=1e-5)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in ref_state.items())


def test_ipo_margin_stays_bounded():
    pol, ref = pair()
    tr = PreferenceTrainer(pol, ref, TOK, toy_rows(8, 2), PreferenceConfig(loss_type="ipo", beta=1.0, learning_rate=1e-2,
                                                                        per_device_train_batch_size=8, max_steps=60))
    logs = tr.train()
    # target margin 1/(2 tau) = 0.5 (in per-token log-ratio units, times beta=1 in the logs)
    assert abs(logs[-1]["margin"] - 0.5) < 0.25


def test_preference_bad_input():
    pol, ref = pair()
    bad = [{"prompt": "1+1=", "chosen": "2", "rejected": "2"}, {"prompt": "1+2=", "chosen": "3", "rejected": "4"}]
    tr = PreferenceTrainer(pol, ref, TOK, bad, PreferenceConfig())  # identical pair: logged skip
    assert len(tr.items) == 1
    with pytest.raises(UserError, match="no usable rows"):
        PreferenceTrainer(pol, ref, TOK, bad[:1], PreferenceConfig())
    with pytest.raises(UserError, match="reference"):
        PreferenceTrainer(pol, None, TOK, bad, PreferenceConfig(loss_type="dpo"))
    with pytest.raises(UserError, match="vocabularies differ"):
        PreferenceTrainer(pol, tiny(vocab=50), TOK, bad, PreferenceConfig())


def test_preference_nan_never_reaches_weights():
    pol, ref = pair()
    tr = PreferenceTrainer(pol, ref, TOK, toy_rows(8, 0), PreferenceConfig(per_device_train_batch_size=8, max_steps=1))
    tr.ref_cache[0, 0] = float("nan")  # a corrupted reference value
    before = {k: v.clone() for k, v in pol.state_dict().items()}
    logs = tr.train()
    assert logs[0]["applied"] is False and tr.guard.skipped == 1
    assert all(torch.equal(v, pol.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("loss,k", [("bt", 2), ("pl", 4)])
def test_reward_model_learns_heldout(loss, k):
    torch.manual_seed(0)
    rm = RewardModel(tiny())
    train, held = toy_rows(128, 0, k), toy_rows(64, 1)
    before = pairwise_accuracy(rm, TOK, held)
    logs = train_reward_model(rm, TOK, train, RewardConfig(loss=loss, learning_rate=3e-3, num_train_epochs=3,
                                                           per_device_train_batch_size=16))
    after = pairwise_accuracy(rm, TOK, held)
    assert after > 0.7 and after > before, (before, after)
    assert logs[-1]["loss"] < logs[0]["loss"]


def test_reward_model_scores_last_real_token():
    rm = RewardModel(tiny()).eval()
    ids = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        s = rm.score(ids, mask)
        alone = rm.score(ids[:1, :3], mask[:1, :3])
    assert s[0].item() == pytest.approx(alone[0].item(), abs=1e-5)
