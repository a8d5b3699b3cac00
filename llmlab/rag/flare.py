"""FLARE: forward-looking active retrieval (Jiang et al. 2023, "Active Retrieval Augmented Generation").

Retrieve only when the model is unsure. The answer is written one sentence at a time:
  1. look ahead: greedily write the next sentence s from [question, answer so far], no documents;
  2. if every token of s has probability >= theta, keep s (no retrieval);
  3. else retrieve with an implicit query, the question plus s with its unsure tokens (p < theta)
     masked out (FLARE's "masked sentence" query), and write the sentence again with the retrieved
     passages before the question; keep that one.
Token probabilities are the model's own softmax (temperature 1) at each chosen token, from
`generate_batch(..., logprobs=True)`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

_SENT_END = re.compile(r"[.!?](?=\s)|\n")


@dataclass
class FlareResult:
    text: str
    steps: list[dict] = field(default_factory=list)  # per sentence: sentence, min_prob, retrieved, query

    @property
    def retrievals(self) -> int:
        return sum(s["retrieved"] for s in self.steps)


def next_sentence(model, tok, prompt: str, max_new_tokens: int = 32) -> tuple[str, list[str], list[float]]:
    """Greedy continuation up to its first sentence end (kept) -> (sentence, token strings, token probs)."""
    from llmlab.infer.generate import generate_batch
    from llmlab.infer.sampling import SamplingParams
    ids = tok.encode(prompt, allow_special=False)[-(model.config.max_position_embeddings - max_new_tokens - 1):]
    eos = getattr(tok, "eos_id", None)

    def done(row, gen):
        return bool(_SENT_END.search(tok.decode(gen) + " "))
    batch = generate_batch(model, [ids], SamplingParams(max_new_tokens, 0.0), logprobs=True, stop_when=done,
                           stop_ids=[eos] if eos is not None else ())
    gen, lps = batch.completions(keep_stop=False)[0], batch.logprobs[0].tolist()
    pieces, text = [], ""
    for t in gen:  # the text each token adds (decoding prefixes keeps multi-byte characters whole)
        new = tok.decode(gen[:len(pieces) + 1])
        pieces.append(new[len(text):])
        text = new
    m = _SENT_END.search(text + " ")
    if m:  # cut after the sentence end; keep the tokens that make it up
        cut, text, kept = m.end(), text[:m.end()], []
        for p in pieces:
            if sum(len(x) for x in kept) >= cut:
                break
            kept.append(p)
        pieces = kept
    return text, pieces, [math.exp(x) for x in lps[:len(pieces)]]


def masked_query(question: str, pieces: list[str], probs: list[float], theta: float) -> str:
    """The question plus the look-ahead sentence without its tokens of probability < theta."""
    kept = "".join(p for p, q in zip(pieces, probs) if q >= theta)
    return " ".join(f"{question} {kept}".split())


def flare_generate(model, tok, question: str, search: Callable[[str, int], list[str]], theta: float = 0.5,
                   k: int = 3, max_sentences: int = 4, sentence_tokens: int = 32,
                   template: str = "Passage: {passages}\n\n{question}") -> FlareResult:
    """Write up to `max_sentences` sentences after `question` with FLARE; `search(query, k)` returns
    passage texts. Stops early at an empty sentence or the end of a line."""
    out = FlareResult("")
    for _ in range(max_sentences):
        look, pieces, probs = next_sentence(model, tok, question + out.text, sentence_tokens)
        if not look.strip():
            break
        step = {"sentence": look, "min_prob": min(probs, default=1.0), "retrieved": False, "query": None}
        if probs and min(probs) < theta:
            step["query"] = masked_query(question, pieces, probs, theta)
            passages = "\n".join(search(step["query"], k))
            look, _, _ = next_sentence(model, tok, template.format(passages=passages, question=question) + out.text,
                                       sentence_tokens)
            step.update(sentence=look, retrieved=True)
        out.steps.append(step)
        out.text += look
        if look.endswith("\n") or not look.strip():
            break
    return out
