"""Sequence log-probs with padding, the rollout sampler and the NaN guard."""
from __future__ import annotations

import pytest
import torch

from llmlab.align.logprobs import sequence_logprobs
from llmlab.align.nan_guard import NanGuard
from llmlab.align.rollout import pad_left, sample
from llmlab.infer.sampling import filter_logits
from llmlab.errors import UserError
from llmlab.model import Transformer


@pytest.fixture
def model(tiny_config):
    torch.manual_seed(0)
    return Transformer(tiny_config).eval()


def naive_logprob(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    lp = model(ids).log_softmax(-1)[0]
    return sum(lp[len(prompt) + i - 1, t].item() for i, t in enumerate(completion))


def test_sequence_logprobs_match_unbatched(model):
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]]
    comps = [[11, 12], [13, 14, 15, 16], [17]]
    with torch.no_grad():
        lp, n = sequence_logprobs(model, prompts, comps, pad_id=0)
        avg, _ = sequence_logprobs(model, prompts, comps, pad_id=0, average=True)
    for i in range(3):
        assert lp[i].item() == pytest.approx(naive_logprob(model, prompts[i], comps[i]), abs=1e-4)
    assert n.tolist() == [2, 4, 1]
    assert torch.allclose(avg, lp / n)


def test_sequence_logprobs_bad_rows(model):
    with pytest.raises(UserError, match="empty completion"):
        sequence_logprobs(model, [[1, 2]], [[]])


def test_sample_left_padding_matches_single_rows(model):
    prompts = [[1, 2, 3, 4], [5, 6]]
    ro = sample(model, prompts, 5, eos_id=None, pad_id=0, temperature=0)
    for i, p in enumerate(prompts):
        one = sample(model, [p], 5, eos_id=None, pad_id=0, temperature=0)
        assert ro.completions()[i] == one.completions()[0]
    ids, mask = pad_left([[1], [2, 3]], 0)
    assert ids.tolist() == [[0, 1], [2, 3]] and mask.tolist() == [[0, 1], [1, 1]]


def test_sample_stops_at_eos_and_masks_after(model):
    g = torch.Generator().manual_seed(0)
    greedy = sample(model, [[1, 2]], 3, eos_id=None, pad_id=0, temperature=0)
    eos = greedy.completions()[0][1]  # force the second greedy token to be the EOS
    ro = sample(model, [[1, 2]], 6, eos_id=eos, pad_id=0, temperature=0, generator=g)
    c = ro.completions()[0]
    assert c[-1] == eos and eos not in c[:-1]
    assert ro.completion_mask[0].sum().item() == len(c)


def test_top_p_filter():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.01)).sum() == 1


def test_nan_guard_skips_and_rolls_back(model):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = NanGuard(model, opt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.tensor([[1, 2, 3]])
    assert guard.step(model(x).sum() * float("nan")) is False  # NaN loss
    bad = model(x).sum() * torch.tensor(float("inf"), requires_grad=True)
    assert guard.step(bad) is False  # inf loss
    w = model.model.embed_tokens.weight
    h = w.register_hook(lambda g: g * float("inf"))
    assert guard.step(model(x).float().pow(2).mean()) is False  # inf gradient
    h.remove()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # an optimizer that writes NaN into the weights: rolled back to the last good snapshot
    assert guard.step(model(x).float().pow(2).mean()) is True
    good = {k: v.clone() for k, v in model.state_dict().items()}
    orig = opt.step
    opt.step = lambda: (orig(), w.data.fill_(float("nan")))
    assert guard.step(model(x).float().pow(2).mean()) is False
    assert guard.rolled_back == 1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in good.items())


def test_token_logprobs_start_skips_prompt_positions(model):
    from llmlab.align.logprobs import token_logprobs
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        full = token_logprobs(model, ids, mask)
        part, logits = token_logprobs(model, ids, mask, start=3, return_logits=True)
    assert torch.allclose(full[:, 3:], part, atol=1e-6) and logits.shape[1] == 2
