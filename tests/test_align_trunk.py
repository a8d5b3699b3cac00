"""The shared frozen trunk gives the plain model's outputs, memoises rows, and trains the top only."""
from __future__ import annotations

import copy

import pytest
import torch

from llmlab.align.frozen_trunk import SharedTrunk, share_frozen_trunk
from llmlab.align.grpo import GRPOConfig, GRPOTrainer
from llmlab.align.logprobs import sequence_logprobs
from llmlab.align.reward_model import RewardModel
from llmlab.align.rewards import arithmetic_reward
from llmlab.align.rollout import sample
from llmlab.align.toy import CharTokenizer, toy_sum_prompts
from llmlab.errors import UserError
from llmlab.model import ModelConfig, Transformer


def tiny(seed=0, layers=4):
    tok = CharTokenizer()
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=True)
    return tok, Transformer(cfg).eval()


def test_outputs_match_the_plain_model_and_rows_are_memoised():
    tok, plain = tiny()
    pol, ref = copy.deepcopy(plain), copy.deepcopy(plain)
    trunk = share_frozen_trunk([pol, ref], n_train=1)
    prompts = [tok.encode("1+2="), tok.encode("13+4="), tok.encode("1+2=")]
    comps = [tok.encode("3"), tok.encode("17"), tok.encode("4")]
    with torch.no_grad():
        want, _ = sequence_logprobs(plain, prompts, comps, tok.pad_id)
        got, _ = sequence_logprobs(pol, prompts, comps, tok.pad_id)
        assert torch.allclose(got, want, atol=1e-5)
        misses = trunk.misses
        got_ref, _ = sequence_logprobs(ref, prompts, comps, tok.pad_id)  # same rows: all from the memo
        assert trunk.misses == misses and trunk.hits >= 3
        assert torch.allclose(got_ref, want, atol=1e-5)
        # KV-cache sampling (left padding), prefill memoised: identical greedy tokens, twice
        a = sample(plain, prompts, 4, tok.eos_id, tok.pad_id, 0.0)
        b = sample(pol, prompts, 4, tok.eos_id, tok.pad_id, 0.0)
        hits = trunk.hits
        c = sample(pol, prompts, 4, tok.eos_id, tok.pad_id, 0.0)
        assert trunk.hits == hits + 3  # every prefill row came from the memo
        assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(b.completion_ids, c.completion_ids)
        # duplicated rows in one batch are computed once
        trunk.clear()
        m0 = trunk.misses
        sample(pol, [tok.encode("2+2=")] * 5, 2, tok.eos_id, tok.pad_id, 0.0)
        assert trunk.misses == m0 + 1


def test_only_the_top_trains_and_the_reference_stays_put():
    tok, plain = tiny()
    pol, ref = copy.deepcopy(plain), copy.deepcopy(plain)
    critic = RewardModel(copy.deepcopy(plain))
    share_frozen_trunk([pol, ref, critic.backbone], n_train=2)
    assert pol.model.layers[0] is ref.model.layers[0] is critic.backbone.model.layers[0]
    assert isinstance(pol.model.layers[0], SharedTrunk) and len(pol.model.layers) == 3
    trainable = {n for n, p in pol.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.layers.1.", "model.layers.2.", "model.norm.")) for n in trainable)
    before = {n: p.clone() for n, p in pol.named_parameters()}
    ref_before = {n: p.clone() for n, p in ref.named_parameters()}
    cfg = GRPOConfig(num_generations=4, prompts_per_step=2, max_steps=3, max_completion_length=3,
                     learning_rate=3e-2, seed=0)
    GRPOTrainer(pol, ref, tok, toy_sum_prompts(4), arithmetic_reward, cfg).train()
    changed = {n for n, p in pol.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert all(torch.equal(p, ref_before[n]) for n, p in ref.named_parameters())


def test_setup_errors():
    tok, a = tiny(0)
    _, b = tiny(1)
    with pytest.raises(UserError, match="differ"):
        share_frozen_trunk([a, b], n_train=1)
    with pytest.raises(UserError, match="n_train"):
        share_frozen_trunk([a], n_train=4)
    share_frozen_trunk([a], n_train=1)
    with pytest.raises(UserError, match="already"):
        share_frozen_trunk([a], n_train=1)


def test_rollout_rows_reuse_the_memoised_prompt_prefill():
    from llmlab.align.logprobs import token_logprobs
    tok, plain = tiny()
    pol = copy.deepcopy(plain)
    trunk = share_frozen_trunk([pol], n_train=1)
    prompts = [tok.encode("1+2="), tok.encode("13+4="), tok.encode("3+3=")]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ro = sample(pol, prompts, 3, tok.eos_id, tok.pad_id, 1.0, 1.0, gen)
        P = ro.prompt_ids.shape[1]
        want = token_logprobs(plain, ro.ids, ro.attention_mask, start=P - 1)
        got = token_logprobs(pol, ro.ids, ro.attention_mask, start=P - 1)
    assert trunk.prefix_hits == 3
    m = ro.completion_mask.bool()
    assert torch.allclose(got[m], want[m], atol=1e-5)


def test_fork_shares_the_trunk_and_copies_the_top():
    from llmlab.align.frozen_trunk import fork
    tok, plain = tiny()
    share_frozen_trunk([plain], n_train=1)
    a, b = fork(plain), fork(RewardModel(plain))
    assert a.model.layers[0] is plain.model.layers[0] is b.backbone.model.layers[0]
    assert a.model.embed_tokens is plain.model.embed_tokens and a.lm_head.weight is a.model.embed_tokens.weight
    assert a.model.layers[1] is not plain.model.layers[1]
    with torch.no_grad():
        a.model.layers[1].mlp.down_proj.weight.add_(1.0)
    assert not torch.equal(a.model.layers[1].mlp.down_proj.weight, plain.model.layers[1].mlp.down_proj.weight)


def test_fork_of_a_frozen_reference_trains_its_top_only():
    from llmlab.align.frozen_trunk import fork
    tok, plain = tiny()
    share_frozen_trunk([plain], n_train=1)
    for p in plain.parameters():
        p.requires_grad_(False)
    a = fork(plain)
    trainable = {n for n, p in a.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.layers.1.", "model.norm.")) for n in trainable)
    assert not any(p.requires_grad for p in plain.parameters())


def test_right_padded_rows_share_their_common_prefix():
    """Chosen/rejected rows of one prompt: the prompt's trunk work is done once, results unchanged."""
    tok, plain = tiny()
    pol = copy.deepcopy(plain)
    trunk = share_frozen_trunk([pol], n_train=1)
    prompts = [tok.encode("12+34+5="), tok.encode("12+34+5="), tok.encode("7*8-1="), tok.encode("7*8-1=")]
    comps = [tok.encode("51"), tok.encode("52"), tok.encode("55"), tok.encode("5")]
    with torch.no_grad():
        want, _ = sequence_logprobs(plain, prompts, comps, tok.pad_id)
        got, _ = sequence_logprobs(pol, prompts, comps, tok.pad_id)
        assert torch.allclose(got, want, atol=1e-5)
        assert trunk.prefix_hits == 2  # the second row of each prompt
        # a later batch with a known prompt and a new completion reuses the memoised prefix
        more = [tok.encode("12+34+5="), tok.encode("99+1=")]
        extra = [tok.encode("50"), tok.encode("100")]
        want2, _ = sequence_logprobs(plain, more, extra, tok.pad_id)
        got2, _ = sequence_logprobs(pol, more, extra, tok.pad_id)
        assert torch.allclose(got2, want2, atol=1e-5) and trunk.prefix_hits == 3
