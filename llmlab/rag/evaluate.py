"""Retrieval evaluation on questions whose source is known.

Queries are the wiki cloze items (llmlab.eval.tasks.cloze.make_item): a sentence of an article
with a span blanked out; the article is the single relevant document. Metrics (binary relevance):

  recall@k  = share of queries whose article is among the top k
  nDCG@10   = mean over queries of 1 / log2(1 + rank) if rank <= 10 else 0 (one relevant document,
              so the ideal DCG is 1; Jarvelin & Kekalainen 2002)
"""
from __future__ import annotations

import math
import random


def cloze_queries(extracts: list[str], n: int, seed: int = 0) -> list[tuple[str, int]]:
    """(query, index of its article) for up to n random articles; the blank is removed."""
    from llmlab.eval.tasks.cloze import seeded_items
    return [(" ".join(it["question"].replace("_____", " ").split()), i) for it, i in seeded_items(extracts, n, seed)]


def rank_of(ranked: list[int], gold: int) -> int | None:
    for r, d in enumerate(ranked, 1):
        if d == gold:
            return r
    return None


def recall_at_k(runs: list[list[int]], golds: list[int], k: int) -> float:
    return sum((rank_of(r[:k], g) is not None) for r, g in zip(runs, golds)) / max(len(golds), 1)


def ndcg_at_k(runs: list[list[int]], golds: list[int], k: int = 10) -> float:
    total = 0.0
    for r, g in zip(runs, golds):
        rank = rank_of(r[:k], g)
        total += 1 / math.log2(1 + rank) if rank else 0.0
    return total / max(len(golds), 1)


def _cloze_prompt(question: str, passages: str | None, shots: list[dict]) -> str:
    """The eval stage's cloze format (two worked examples from other articles, then the item);
    closed-book drops the passages, also from the examples."""
    def block(passage, sentence):
        return (f"Passage: {passage}\n" if passage is not None else "") + f"Sentence: {sentence}\nThe blank is:"
    head = "".join(block(sh["passage"] if passages is not None else None, sh["question"]) + f" {sh['answer']}\n\n"
                   for sh in shots)
    return head + block(passages, question)


def greedy_line(model, tok, prompt: str, max_new_tokens: int = 16) -> str:
    """Greedy completion up to the end of the line (llmlab.infer.generate)."""
    from llmlab.infer.generate import stream_text
    from llmlab.infer.sampling import SamplingParams
    ids = tok.encode(prompt, allow_special=False)[-(model.config.max_position_embeddings - max_new_tokens - 1):]
    return "".join(stream_text(model, tok, ids, SamplingParams(max_new_tokens, 0.0, stop=("\n",))))


def evaluate_index(index, extracts: list[str], sources: list[str], n: int, seed: int, modes=("hybrid", "dense", "bm25"),
                   model=None, tok=None, n_qa: int = 0, k_qa: int = 3) -> dict:
    """Retrieval recall@1/5 and nDCG@10 per mode (a hit = a chunk of the query's article) and, with a
    model, cloze EM/F1 closed-book vs with the top `k_qa` retrieved chunks in the prompt."""
    from llmlab.eval.squad import exact_match, token_f1
    from llmlab.eval.tasks.cloze import make_item
    from llmlab.eval.tasks.cloze import seeded_items
    items = seeded_items(extracts, n, seed)
    pos = {s: j for j, s in enumerate(sources)}
    out: dict = {"n": len(items)}
    for mode in modes:
        runs = []
        for it, _ in items:
            q = " ".join(it["question"].replace("_____", " ").split())
            seen, ranked = set(), []
            for h in index.search(q, 30, mode):  # chunks -> distinct articles, in rank order
                if h.source not in seen:
                    seen.add(h.source)
                    ranked.append(pos.get(h.source, -1))
            runs.append(ranked)
        golds = [i for _, i in items]
        out[mode] = {"recall_at_1": recall_at_k(runs, golds, 1), "recall_at_5": recall_at_k(runs, golds, 5),
                     "ndcg_at_10": ndcg_at_k(runs, golds, 10)}
    if model is not None and n_qa:
        shot_rng, used = random.Random(seed + 1), {i for _, i in items}
        shots = [it for it in (make_item(extracts[j], shot_rng) for j in range(len(extracts)) if j not in used)
                 if it is not None][:2]
        scores = {"closed_book": [0.0, 0.0], "retrieval": [0.0, 0.0]}
        for it, _ in items[:n_qa]:
            q = " ".join(it["question"].replace("_____", " ").split())
            hits = index.search(q, k_qa, "hybrid")
            ctx = " ".join(h.text[:500] for h in hits)
            for name, prompt in (("closed_book", _cloze_prompt(it["question"], None, shots)),
                                 ("retrieval", _cloze_prompt(it["question"], ctx, shots))):
                pred = greedy_line(model, tok, prompt).strip()
                scores[name][0] += exact_match(pred, it["answer"])
                scores[name][1] += token_f1(pred, it["answer"])
        m = min(n_qa, len(items))
        out["qa"] = {k: {"exact_match": v[0] / m, "f1": v[1] / m, "n": m} for k, v in scores.items()}
    return out
