"""REPLUG (Shi et al. 2023, "REPLUG: Retrieval-augmented black-box language models"): instead of
concatenating all retrieved documents into one prompt, run the LM once per document (each
prepended to the question) and ensemble the predictions, weighted by retrieval score:

    p(y_t | x, y_<t) = sum_d lambda_d p(y_t | d + x, y_<t),   lambda = softmax(s(d, x) / tau)

over the top-k documents d with retrieval scores s (cosine similarity, BM25...). Each document
needs only its own short context, the window is never shared, and a document the retriever
trusts less weighs less. Generation here is greedy over the mixed distribution, with one KV cache
row per document (`llmlab.infer.generate.CacheForward`). `replug_logprob` scores a given answer
by the sequence-level mixture sum_d lambda_d p(y | d + x) (the paper's LM-scoring form).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from llmlab.errors import UserError

TEMPLATE = "{doc}\n\nQuestion: {question}\nAnswer:"


def replug_weights(scores: Sequence[float], temperature: float = 1.0) -> torch.Tensor:
    if not scores:
        raise UserError("REPLUG needs at least one retrieved document")
    if temperature <= 0:
        raise UserError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(torch.tensor(scores, dtype=torch.float64) / temperature, 0)


def _pad_id(tok) -> int:
    pad = getattr(tok, "pad_id", None)
    return pad if pad is not None else (getattr(tok, "eos_id", None) or 0)


def _prompts(tok, question, docs, template):
    return [tok.encode(template.format(doc=d, question=question), allow_special=False) for d in docs]


@torch.inference_mode()
def replug_generate(model, tok, question: str, docs: Sequence[str], scores: Sequence[float],
                    max_new_tokens: int = 32, temperature: float = 1.0, stop: Sequence[str] = ("\n",),
                    template: str = TEMPLATE) -> tuple[str, list[float]]:
    """Greedy answer under the REPLUG mixture -> (text, document weights)."""
    from llmlab.infer.generate import CacheForward
    w = replug_weights(scores, temperature)
    if len(w) != len(docs):
        raise UserError(f"{len(docs)} documents but {len(w)} scores")
    fwd = CacheForward(model, _prompts(tok, question, docs, template), _pad_id(tok), max_new_tokens)
    eos = getattr(tok, "eos_id", None)
    out: list[int] = []
    logits = fwd(None)
    for step in range(max_new_tokens):
        mix = (w.to(logits.device)[:, None] * torch.softmax(logits.double(), -1)).sum(0)
        t = int(mix.argmax())
        if t == eos:
            break
        out.append(t)
        text = tok.decode(out)
        if any(s in text for s in stop):
            return text[:min(text.index(s) for s in stop if s in text)], w.tolist()
        if step + 1 < max_new_tokens:
            logits = fwd([t] * len(docs))
    return tok.decode(out), w.tolist()


@torch.inference_mode()
def replug_logprob(model, tok, question: str, docs: Sequence[str], scores: Sequence[float], answer: str,
                   temperature: float = 1.0, template: str = TEMPLATE) -> float:
    """log sum_d lambda_d p(answer | d + question)."""
    w = replug_weights(scores, temperature)
    ans = tok.encode(answer, allow_special=False)
    terms = []
    for wd, prompt in zip(w.tolist(), _prompts(tok, question, docs, template)):
        ids = torch.tensor([prompt + ans])
        logp = torch.log_softmax(model(ids)[0, len(prompt) - 1:-1].double(), -1)
        terms.append(math.log(wd) + float(logp.gather(-1, torch.tensor(ans)[:, None]).sum()))
    return float(torch.logsumexp(torch.tensor(terms), 0))
