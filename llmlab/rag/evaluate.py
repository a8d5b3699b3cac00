"""Retrieval evaluation on questions whose source is known.

Queries are the wiki cloze items (llmlab.eval.tasks.cloze.make_item): a sentence of an article
with a span blanked out; the article is the single relevant document. Metrics (binary relevance):

  recall@k  = share of queries whose article is among the top k
  nDCG@10   = mean over queries of 1 / log2(1 + rank) if rank <= 10 else 0 (one relevant document,
              so the ideal DCG is 1; Jarvelin & Kekalainen 2002)
"""
from __future__ import annotations

import math
import re
import sys


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


def completion_item(item: dict, title: str) -> tuple[str, str]:
    """(question, answer) from a cloze item: the article's title and the blanked sentence up to the
    blank ("Berlin: With 3.7 million inhabitants, ... of any city in the" -> "European Union").
    The model continues the text; closed-book it must know the fact, with retrieval it can read it."""
    return f"{title}: {item['question'].split('_____')[0].rstrip()}", item["answer"]


def answer_span(continuation: str, answer: str) -> tuple[str, str]:
    """Two readings of a greedy continuation, applied alike to both conditions: its first as many
    words as the gold answer has (LAMBADA-style scoring), and the text up to the first , . ; ( or
    newline (no knowledge of the gold)."""
    return " ".join(continuation.split()[:len(answer.split())]), re.split(r"[,.;(\n]", continuation, 1)[0]


def greedy_line(model, tok, prompt: str, max_new_tokens: int = 16) -> str:
    """Greedy completion up to the end of the line (llmlab.infer.generate)."""
    from llmlab.infer.generate import stream_text
    from llmlab.infer.sampling import SamplingParams
    ids = tok.encode(prompt, allow_special=False)[-(model.config.max_position_embeddings - max_new_tokens - 1):]
    return "".join(stream_text(model, tok, ids, SamplingParams(max_new_tokens, 0.0, stop=("\n",))))


def evaluate_index(index, extracts: list[str], sources: list[str], n: int, seed: int, modes=("hybrid", "dense", "bm25"),
                   model=None, tok=None, n_qa: int = 0, k_qa: int = 3, titles: list[str] | None = None,
                   flare_theta: float = 0.0) -> dict:
    """Retrieval recall@1/5 and nDCG@10 per mode (a hit = a chunk of the query's article) and, with a
    model, answer EM/F1 closed-book vs with the top `k_qa` retrieved chunks (answer_qa)."""
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
        out["qa"] = answer_qa(index, items[:n_qa], titles or sources, model, tok, k_qa, flare_theta)
    return out


def answer_qa(index, items: list[tuple[dict, int]], titles: list[str], model, tok, k: int = 3,
              flare_theta: float = 0.0) -> dict:
    """EM / token F1 (SQuAD) of greedy completions (completion_item), closed-book vs with the top k
    hybrid chunks of `index` (retrieved with the question itself) as "Passage: ..." before it, and,
    with flare_theta > 0, FLARE (llmlab.rag.flare: retrieve only when a look-ahead token is unsure)."""
    from llmlab.eval.squad import exact_match, token_f1
    from llmlab.rag.flare import flare_generate
    conds = ("closed_book", "retrieval") + (("flare",) if flare_theta > 0 else ())
    sums = {c: {"exact_match": 0.0, "f1": 0.0, "f1_to_punct": 0.0} for c in conds}
    retrievals = 0
    for j, (it, i) in enumerate(items):
        question, answer = completion_item(it, titles[i])
        ctx = "\n".join(h.text for h in index.search(question, k, "hybrid"))
        outs = {"closed_book": greedy_line(model, tok, question, 12),
                "retrieval": greedy_line(model, tok, f"Passage: {ctx}\n\n{question}", 12)}
        if flare_theta > 0:
            res = flare_generate(model, tok, question, lambda q, n: [h.text for h in index.search(q, n, "hybrid")],
                                 theta=flare_theta, k=k, max_sentences=1, sentence_tokens=12)
            outs["flare"], retrievals = res.text, retrievals + res.retrievals
        for cond, text in outs.items():
            by_len, to_punct = answer_span(text, answer)
            sums[cond]["exact_match"] += exact_match(by_len, answer)
            sums[cond]["f1"] += token_f1(by_len, answer)
            sums[cond]["f1_to_punct"] += token_f1(to_punct, answer)
        print(f"qa {j + 1}/{len(items)}: " + " ".join(f"{c} F1 {d['f1'] / (j + 1):.3f}" for c, d in sums.items())
              + (f" retrievals {retrievals}" if flare_theta > 0 else ""), file=sys.stderr, flush=True)
    n = max(len(items), 1)
    out = {c: {**{m: v / n for m, v in d.items()}, "n": len(items)} for c, d in sums.items()}
    if flare_theta > 0:
        out["flare"].update(theta=flare_theta, retrieval_rate=retrievals / n)
    return out
