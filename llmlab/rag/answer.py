"""Answering with retrieved sources: numbered context, a prompt asking for [n] citations, LLM
reranking by the log-probability of "Yes", and a check that every citation points at a source.

Reranking (a cross-encoder is not packaged): relevance(q, d) = log P(" Yes" | "Document: d
Question: q Is the document relevant to the question? Answer Yes or No. Answer:") under the
chat model, one scored continuation per candidate (llmlab.eval.scoring, batch-invariant).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from llmlab.eval.squad import normalize_answer

_CITE = re.compile(r"\[(\d+)\]")


def context_block(hits, max_chars: int = 600) -> str:
    return "\n".join(f"[{i}] ({h.title or h.source}) {h.text[:max_chars]}" for i, h in enumerate(hits, 1))


def language_note(idx, query: str) -> str:
    """A note for the prompt when the question's language is not the index's (answer in the question's)."""
    from llmlab.data.langid import detect_language
    q, d = detect_language(query), idx.language()
    if q != d and "other" not in (q, d):
        return f"the question is in '{q}' but the index is mostly '{d}'; answer in the question's language"
    return ""


def messages(question: str, hits, note: str = "") -> list[dict]:
    system = ("Answer the question using only the numbered sources. Cite the sources you use as [1], [2]. "
              "If the sources do not contain the answer, say you do not know.")
    user = f"Sources:\n{context_block(hits)}\n\nQuestion: {question}" + (f"\n({note})" if note else "")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


_STOP = set("a an the is are was were be been of in on at to for and or but with by from as it its this that "
             "these those what which who whom when where why how do does did answer question source sources".split())


def _overlap(sentence: str, source: str, question: str) -> float:
    """Share of the sentence's content words (not in the question, not stopwords) found in the source."""
    ts = set(normalize_answer(sentence).split()) - set(normalize_answer(question).split()) - _STOP
    return len(ts & set(normalize_answer(source).split())) / len(ts) if ts else 0.0


@dataclass
class Cited:
    text: str
    cited: list[int]  # source numbers the answer cites (1-based), each a real source
    added: bool  # citations were attributed afterwards (the model wrote none)


def add_citations(answer: str, hits, question: str = "", min_overlap: float = 0.5) -> Cited:
    """Keep the model's valid [n] markers and drop invalid ones; if it cited nothing, attribute each
    sentence to the source holding most of its content words (at least `min_overlap` of them)."""
    n = len(hits)
    text = _CITE.sub(lambda m: m.group(0) if 1 <= int(m.group(1)) <= n else "", answer).strip()
    cited = sorted({int(x) for x in _CITE.findall(text)})
    if cited or not hits:
        return Cited(text, cited, False)
    out = []
    for sent in re.split(r"(?<=[.!?])\s+", text):
        scores = [_overlap(sent, h.text, question) for h in hits]
        best = max(range(n), key=lambda i: (scores[i], -i))
        if sent and scores[best] >= min_overlap:
            sent = re.sub(r"([.!?]?)$", f" [{best + 1}]\\1", sent, count=1)
            cited.append(best + 1)
        out.append(sent)
    return Cited(" ".join(out), sorted(set(cited)), bool(cited))


def rerank(model, tokenizer, question: str, hits, keep: int | None = None):
    """Order hits by the LLM's log P(Yes) that the chunk is relevant (highest first)."""
    from llmlab.eval.scoring import encode_pair, loglikelihoods
    prefix = tokenizer.bos_id if tokenizer.bos_id is not None else (tokenizer.eos_id or 0)
    reqs = []
    for h in hits:
        ctx = (f"Document: {h.text[:1200]}\nQuestion: {question}\n"
               "Is the document relevant to the question? Answer Yes or No.\nAnswer:")
        reqs.append(encode_pair(tokenizer, ctx, " Yes", prefix))
    scores = [r.logprob for r in loglikelihoods(model, reqs, batch_size=8)]
    order = sorted(range(len(hits)), key=lambda i: (-scores[i], i))
    for i in order:
        hits[i].score = scores[i]
    return [hits[i] for i in order][:keep]
