"""Fusion-in-decoder over a decoder-only model: one passage = plain concatenation, each passage read
alone (its window's states do not see the others), and the answer does not depend on passage order."""
from __future__ import annotations

import pytest
import torch
from tiny_byte_model import ByteTok, tiny_byte_model

from llmlab.errors import UserError
from llmlab.rag.fid import TASK, WINDOW, fid_generate, fid_logits


def _model():
    return tiny_byte_model(256)


P = ["Paris is in France.", "The Nile is long.", "Rome has seven hills."]
Q = "Where is Paris?"


def test_one_passage_equals_plain_concatenation():
    m, tok = _model(), ByteTok()
    ids = tok.encode(WINDOW.format(passage=P[0]) + TASK.format(question=Q))
    want = []
    with torch.no_grad():
        for _ in range(5):  # greedy by full forward passes over the concatenated prompt
            want.append(int(m(torch.tensor([ids + want]))[0, -1].argmax()))
    text = fid_generate(m, tok, Q, P[:1], max_new_tokens=5, stop=())
    assert text == tok.decode(want)
    torch.testing.assert_close(fid_logits(m, tok, Q, P[:1], want[:2]), m(torch.tensor([ids + want[:2]]))[0, -1])


def test_order_invariant_unlike_concatenation():
    m, tok = _model(), ByteTok()
    a, b = fid_logits(m, tok, Q, P), fid_logits(m, tok, Q, P[::-1])
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    concat = lambda ps: m(torch.tensor([tok.encode(WINDOW.format(passage="\n".join(ps)) + TASK.format(question=Q))]))[0, -1]
    with torch.no_grad():
        assert (concat(P) - concat(P[::-1])).abs().max() > 1e-3  # the plain prompt does depend on order


def test_cached_generation_equals_full_forward_passes():
    m, tok = _model(), ByteTok()
    want = []
    for _ in range(6):
        want.append(int(fid_logits(m, tok, Q, P, want).argmax()))
    assert fid_generate(m, tok, Q, P, max_new_tokens=6, stop=()) == tok.decode(want)


def test_answer_reads_every_passage():
    m, tok = _model(), ByteTok()
    base = fid_logits(m, tok, Q, P)
    changed = fid_logits(m, tok, Q, [P[0], "Something else entirely.", P[2]])
    assert (base - changed).abs().max() > 1e-3


def test_no_passages_is_a_user_error():
    with pytest.raises(UserError):
        fid_generate(_model(), ByteTok(), Q, [])
