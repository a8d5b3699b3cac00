"""Deterministic log-likelihood scoring: batch-size/padding invariance, windows, truncation."""
from __future__ import annotations

import random

import pytest
import torch

from llmlab.eval.data import wiki_extracts
from llmlab.eval.scoring import encode_pair, loglikelihoods, rolling_nll, rolling_windows
from llmlab.model import Transformer


@pytest.fixture(scope="module")
def requests_text():
    rng = random.Random(0)
    out = []
    for e in wiki_extracts()[:8]:
        words = e["extract"].split()[:rng.randint(5, 30)]
        cut = rng.randint(1, len(words) - 1)
        out.append((" ".join(words[:cut]), " " + " ".join(words[cut:])))
    return out


def test_batch_size_invariance_bitwise_tiny(tiny_config):
    torch.manual_seed(0)
    model = Transformer(tiny_config).eval()
    rng = random.Random(1)
    reqs = [([rng.randrange(97) for _ in range(rng.randint(1, 50))], [rng.randrange(97) for _ in range(rng.randint(1, 8))])
            for _ in range(40)]
    reqs += [(reqs[0][0], [5]), (reqs[0][0], [6])]  # shared inputs (one forward) stay exact too
    ref = loglikelihoods(model, reqs, batch_size=1, bucket=16)
    for bs in (3, 16, 64):
        got = loglikelihoods(model, reqs, batch_size=bs, bucket=16)
        assert [g.logprob for g in got] == [r.logprob for r in ref]
        assert [g.greedy for g in got] == [r.greedy for r in ref]


def test_batch_1_vs_16_identical_smollm2(smollm2, smollm2_tokenizer, requests_text):
    tok = smollm2_tokenizer
    reqs = [encode_pair(tok, c, x, tok.bos_id) for c, x in requests_text]
    one = loglikelihoods(smollm2, reqs, batch_size=1)
    sixteen = loglikelihoods(smollm2, reqs, batch_size=16)
    assert [a.logprob for a in one] == [b.logprob for b in sixteen]  # bitwise, not approx
    assert all(a.logprob < 0 for a in one)


@pytest.mark.slow  # transformers dequantises the GGUF itself: ~1 min
def test_loglikelihood_matches_transformers(smollm2, hf_smollm2, smollm2_tokenizer, requests_text):
    tok = smollm2_tokenizer
    reqs = [encode_pair(tok, c, x, tok.bos_id) for c, x in requests_text[:4]]
    ours = loglikelihoods(smollm2, reqs, batch_size=4)
    for (ctx, cont), got in zip(reqs, ours):
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(hf_smollm2(ids).logits[0, :-1].float(), -1)
        tgt = ids[0, 1:]
        want = logp.gather(-1, tgt[:, None])[-len(cont):].sum().item()
        assert got.logprob == pytest.approx(want, abs=2e-3)


def test_encode_pair_moves_trailing_space(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ctx, cont = encode_pair(tok, "Answer: ", "Paris", tok.bos_id)
    assert tok.decode(ctx) == "Answer:" and tok.decode(cont) == " Paris"
    assert encode_pair(tok, "", "Hi", 7) == ([7], tok.encode("Hi", allow_special=False))


@pytest.mark.parametrize("n,window", [(1, 4), (4, 4), (5, 4), (17, 4), (30, 7), (8, 1)])
def test_rolling_windows_equal_lm_eval(n, window):
    utils = pytest.importorskip("lm_eval.utils")
    tokens = list(range(100, 100 + n))
    want = [utils.make_disjoint_window(w) for w in
            utils.get_rolling_token_windows(token_list=tokens, prefix_token=0, max_seq_len=window, context_len=1)]
    got = rolling_windows(tokens, 0, window)
    assert [tuple(map(list, w)) for w in want] == [(list(a), list(b)) for a, b in got]
    assert sum(len(b) for _, b in got) == n  # every token predicted exactly once


def test_rolling_nll_short_window_scores_every_token(tiny_config):
    torch.manual_seed(0)
    model = Transformer(tiny_config).eval()
    doc = [random.Random(2).randrange(97) for _ in range(150)]  # longer than the 64-token context
    (nll, n), = rolling_nll(model, [doc], prefix_id=0, max_length=32)
    assert n == 150 and nll > 0
    (nll_full, _), = rolling_nll(model, [doc[:60]], prefix_id=0, max_length=64)
    one = loglikelihoods(model, [([0], doc[:60])], max_length=64)[0]
    assert nll_full == pytest.approx(-one.logprob, abs=1e-9)


def test_truncation_is_reported(tiny_config):
    model = Transformer(tiny_config).eval()
    long_ctx = list(range(90)) * 1
    out = loglikelihoods(model, [(long_ctx, [1, 2]), ([1, 2, 3], [4])], max_length=32)
    assert out[0].truncated and not out[1].truncated
    from llmlab.errors import UserError
    with pytest.raises(UserError, match="continuation of 40 tokens"):
        loglikelihoods(model, [([1], list(range(40)))], max_length=32)
