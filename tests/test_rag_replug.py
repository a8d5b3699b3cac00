"""REPLUG's mixture against a direct computation, one document per plain forward pass."""
from __future__ import annotations

import math

import pytest
import torch
from tiny_byte_model import ByteTok, tiny_byte_model

from llmlab.rag.replug import TEMPLATE, replug_generate, replug_logprob, replug_weights


def _model():
    return tiny_byte_model(128)


DOCS = ["Paris is in France.", "The Nile is long."]
Q = "Where is Paris?"


def test_weights_are_a_softmax_of_scores():
    w = replug_weights([2.0, 1.0], temperature=0.5)
    assert w.tolist() == pytest.approx([math.exp(4) / (math.exp(4) + math.exp(2)), math.exp(2) / (math.exp(4) + math.exp(2))])


def test_generation_follows_the_mixture_step_by_step():
    m, tok = _model(), ByteTok()
    text, w = replug_generate(m, tok, Q, DOCS, [0.3, -0.2], max_new_tokens=6, stop=())
    prompts = [tok.encode(TEMPLATE.format(doc=d, question=Q)) for d in DOCS]
    out = []
    with torch.no_grad():
        for _ in range(6):  # the same choices from full forward passes, one document at a time
            mix = sum(wd * torch.softmax(m(torch.tensor([p + out]))[0, -1].double(), -1) for wd, p in zip(w, prompts))
            out.append(int(mix.argmax()))
    assert text == tok.decode(out)


def test_one_document_is_plain_greedy_and_logprob_is_the_mixture():
    m, tok = _model(), ByteTok()
    text, _ = replug_generate(m, tok, Q, DOCS[:1], [1.0], max_new_tokens=5, stop=())
    p = tok.encode(TEMPLATE.format(doc=DOCS[0], question=Q))
    with torch.no_grad():
        for _ in range(5):
            p.append(int(m(torch.tensor([p]))[0, -1].argmax()))
    assert text == tok.decode(p[-5:])
    lp = replug_logprob(m, tok, Q, DOCS, [0.0, 0.0], " yes")
    single = [replug_logprob(m, tok, Q, [d], [0.0], " yes") for d in DOCS]
    assert lp == pytest.approx(math.log(0.5 * math.exp(single[0]) + 0.5 * math.exp(single[1])))
