"""FLARE (llmlab.rag.flare) on a tiny random model with a character tokenizer: token probabilities
against full forward passes, retrieval exactly when a token is unsure, masked queries by hand."""
import torch

from llmlab.rag.flare import flare_generate, masked_query, next_sentence


class _CharTok:
    """One id per character, all 97 ids of the tiny model: newline, printable ASCII, tab."""
    chars = "\n" + "".join(map(chr, range(32, 127))) + "\t"

    def encode(self, text, allow_special=False):
        return [self.chars.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


def _greedy_by_hand(model, tok, prompt, n):
    ids, probs = tok.encode(prompt), []
    for _ in range(n):
        with torch.no_grad():
            p = torch.softmax(model(torch.tensor([ids]))[0, -1].float(), -1)
        ids.append(int(p.argmax()))
        probs.append(float(p.max()))
    return tok.decode(ids[len(tok.encode(prompt)):]), probs


def test_next_sentence_probabilities(tiny):
    tok = _CharTok()
    text, pieces, probs = next_sentence(tiny, tok, "where is it?", max_new_tokens=6)
    assert "".join(pieces) == text and len(probs) == len(pieces)
    ref, ref_probs = _greedy_by_hand(tiny, tok, "where is it?", len(pieces))
    assert ref == text and len(text) > 0
    assert torch.allclose(torch.tensor(probs), torch.tensor(ref_probs), atol=1e-4)


def test_masked_query_by_hand():
    assert masked_query("who?", [" the", " king", " of", " mars"], [0.9, 0.2, 0.8, 0.1], 0.5) == "who? the of"
    assert masked_query("who?", [" a"], [0.1], 0.5) == "who?"


def test_retrieves_exactly_when_unsure(tiny):
    tok, queries = _CharTok(), []

    def search(q, k):
        queries.append(q)
        return ["the passage"] * k
    never = flare_generate(tiny, tok, "q:", search, theta=0.0, max_sentences=2, sentence_tokens=5)
    assert never.retrievals == 0 and queries == []
    plain, _, _ = next_sentence(tiny, tok, "q:", 5)
    assert never.text.startswith(plain)
    always = flare_generate(tiny, tok, "q:", search, theta=1.01, max_sentences=1, sentence_tokens=5, k=2)
    assert always.retrievals == 1 and len(queries) == 1 and queries[0].startswith("q:")
    with_docs, _, _ = next_sentence(tiny, tok, "Passage: the passage\nthe passage\n\nq:", 5)
    assert always.text == with_docs  # the kept sentence is the one written with the passages
    step = never.steps[0]
    mid = flare_generate(tiny, tok, "q:", search, theta=step["min_prob"] + 1e-6, max_sentences=1, sentence_tokens=5)
    assert mid.retrievals == 1  # theta just above the least sure token: retrieval fires
    low = flare_generate(tiny, tok, "q:", search, theta=step["min_prob"] - 1e-6, max_sentences=1, sentence_tokens=5)
    assert low.retrievals == 0
