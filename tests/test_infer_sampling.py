"""Logits processors against transformers' own, plus hand-computed penalties, seeds, UTF-8 and stop strings."""
from __future__ import annotations

import pytest
import torch

from llmlab.infer.detok import TextStream, Utf8Stream
from llmlab.infer.sampling import (SamplingParams, apply_penalties, banned_ngram_tokens, choose, filter_logits,
                                   draw, top_logprobs, top_p_keep)

transformers = pytest.importorskip("transformers")


def _logits(seed=0, V=50):
    return torch.randn(1, V, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("k", [1, 5, 20])
def test_top_k_matches_hf(k):
    x = _logits(k)
    ref = transformers.TopKLogitsWarper(k)(None, x.clone())
    assert torch.equal(filter_logits(x, top_k=k), ref)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_top_p_matches_hf(p):
    x = _logits(int(p * 10))
    ref = transformers.TopPLogitsWarper(p)(None, x.clone())
    assert torch.equal(torch.isinf(filter_logits(x, top_p=p)), torch.isinf(ref))


def _sort_scatter_top_p(logits, p):
    """The textbook nucleus filter (full sort, mass before each token, scatter back): the rule before
    `top_p_keep`. The probabilities are the sampler's own (softmax over the row as given, then
    sorted): a softmax over the sorted row sums in another order, and its float32 rounding (~1e-6
    over thousands of tail tokens) moves the boundary token at p = 0.999 (found on AVX2)."""
    probs, idx = torch.sort(logits.softmax(-1), descending=True, dim=-1)
    before = torch.cat([torch.zeros_like(probs[..., :1]), probs.cumsum(-1)[..., :-1]], -1)
    drop = before >= p
    drop[..., 0] = False
    sorted_logits = logits.gather(-1, idx)
    return torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits.masked_fill(drop, float("-inf")))


@pytest.mark.parametrize("scale", [0.3, 3.0, 12.0])
@pytest.mark.parametrize("p", [1e-30, 0.05, 0.5, 0.9, 0.999])
def test_top_p_prefix_equals_full_sort(scale, p):
    """The top-k prefix path keeps exactly the full sort's tokens: peaked rows (prefix enough),
    flat rows (falls back to the larger prefix, then to the sort), a V the prefixes do not divide."""
    g = torch.Generator().manual_seed(int(scale * 10) + int(p * 1000))
    x = torch.randn(6, 5003, generator=g) * scale
    x[1, :50] = x[1].max() + 1  # 50 tied leaders
    x[2, ::3] = float("-inf")  # already top-k-filtered entries
    x[3] = x[3].round()  # many ties everywhere
    probs = x.softmax(-1)
    fast, full = top_p_keep(probs, p, prefixes=(16, 256)), top_p_keep(probs, p, prefixes=())
    assert torch.equal(fast, full)
    assert (fast.sum(-1) >= 1).all()
    # without ties the kept set is the textbook rule's; with ties it keeps the whole tied group
    assert torch.equal(torch.isfinite(filter_logits(x[[0, 4, 5]], top_p=p)),
                       torch.isfinite(_sort_scatter_top_p(x[[0, 4, 5]], p)))
    tied = torch.isfinite(filter_logits(x[1:2], top_p=p))
    assert tied[0, :50].all() and tied.sum() >= 50


def test_top_p_prefix_is_cheap():
    """A peaked 49,152-token row (an LM's usual shape) needs no full sort: the prefix path's count
    of sorted rows is zero (the sort is what cost ~8 ms a row)."""
    x = torch.randn(4, 49152, generator=torch.Generator().manual_seed(0)) * 6
    calls = []
    real_sort = torch.sort
    try:
        torch.sort = lambda *a, **k: calls.append(1) or real_sort(*a, **k)
        filter_logits(x, top_p=0.9)
    finally:
        torch.sort = real_sort
    assert calls == []


@pytest.mark.parametrize("m", [0.05, 0.3])
def test_min_p_matches_hf(m):
    x = _logits(7)
    ref = transformers.MinPLogitsWarper(m)(None, x.clone())
    assert torch.equal(torch.isinf(filter_logits(x, min_p=m)), torch.isinf(ref))


def test_repetition_penalty_matches_hf():
    x = _logits(3)
    ctx = [1, 4, 4, 9, 30]
    ref = transformers.RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([ctx]), x.clone())
    got = apply_penalties(x[0], SamplingParams(repetition_penalty=1.3), ctx, n_prompt=2)
    assert torch.allclose(got, ref[0])


def test_no_repeat_ngram_matches_hf():
    ctx = [5, 6, 7, 5, 6, 8, 5, 6]
    x = _logits(4)
    ref = transformers.NoRepeatNGramLogitsProcessor(3)(torch.tensor([ctx]), x.clone())
    assert banned_ngram_tokens(ctx, 3) == {7, 8}
    got = apply_penalties(x[0], SamplingParams(no_repeat_ngram_size=3), ctx, 0)
    assert torch.equal(torch.isinf(got), torch.isinf(ref[0]))


def test_presence_frequency_penalties_by_hand():
    x = torch.zeros(10)
    # prompt [1, 2], output [2, 3, 3]: only output tokens count (OpenAI semantics)
    got = apply_penalties(x, SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), [1, 2, 2, 3, 3], 2)
    want = torch.zeros(10)
    want[2] = -(0.5 + 0.25 * 1)
    want[3] = -(0.5 + 0.25 * 2)
    assert torch.equal(got, want)


def test_params_validation():
    for bad in [dict(temperature=-1), dict(top_p=0), dict(top_k=-2), dict(min_p=2), dict(n=0),
                dict(repetition_penalty=0), dict(presence_penalty=3), dict(logprobs=50), dict(stop=("",))]:
        with pytest.raises(ValueError):
            SamplingParams(**bad)
    assert SamplingParams(stop="x").stop == ("x",)


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    x = _logits(1, V=1000)[0] * 0.1  # flat: many plausible tokens
    p = SamplingParams(temperature=1.0, top_p=0.95)
    draw = lambda s: [choose(x, p, torch.Generator().manual_seed(s)) for _ in range(20)]  # noqa: E731
    assert draw(1) == draw(1)
    assert draw(1) != draw(2)


def test_greedy_and_logprobs():
    x = _logits(2)[0]
    assert choose(x, SamplingParams()) == int(x.argmax())
    lp, top = top_logprobs(x, int(x.argmax()), 3)
    ref = torch.log_softmax(x, -1)
    assert lp == pytest.approx(float(ref.max()))
    assert [t for t, _ in top] == ref.topk(3).indices.tolist()


def test_utf8_stream_never_splits_a_character():
    data = "héllo 世界 🙂".encode()
    s = Utf8Stream()
    pieces = [s.push(data[i:i + 1]) for i in range(len(data))] + [s.flush()]
    assert "".join(pieces) == "héllo 世界 🙂"
    assert all("\ufffd" not in p for p in pieces)


def test_stop_strings_hold_back_and_cut():
    t = TextStream(stop=("END",))
    outs = [t.push(b) for b in [b"abc E", b"N", b"D tail"]]
    assert outs == [("abc ", False), ("", False), ("", True)]
    assert t.text == "abc "
    t = TextStream(stop=("END",))
    assert t.push(b"xE") == ("x", False)
    assert t.push(b"Nope") == ("ENope", False)  # not a stop after all: released
    assert t.finish() == ""


@pytest.mark.parametrize("nonzero", [5, 900])
def test_draw_follows_the_distribution(nonzero):
    """`draw` (multinomial over the drawable tokens only, or over all of them) against the
    probabilities: chi-square goodness of fit, and the same seed gives the same tokens."""
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(nonzero)
    probs = torch.zeros(1000)
    support = torch.randperm(1000, generator=g)[:nonzero]
    probs[support] = torch.rand(nonzero, generator=g) + 0.2
    probs /= probs.sum()
    n = 4000
    gen = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.tensor([draw(probs, gen) for _ in range(n)]), minlength=1000)
    assert counts[probs == 0].sum() == 0
    if nonzero == 5:
        expected = probs[support].double() / probs[support].double().sum() * n
        assert stats.chisquare(counts[support].double().numpy(), expected.numpy()).pvalue > 1e-3
    assert [draw(probs, torch.Generator().manual_seed(7)) for _ in range(3)] == \
        [draw(probs, torch.Generator().manual_seed(7)) for _ in range(3)]
