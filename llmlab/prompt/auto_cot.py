"""Auto-CoT (Zhang et al. 2022, "Automatic chain of thought prompting in large language models"):
chain-of-thought demonstrations without hand-written rationales.

1. Embed the pool of questions (MiniLM, `llmlab.rag.embed.SentenceEncoder`) and cluster them
   with k-means into k clusters (k = number of demonstrations): diverse demos, since similar
   questions with a wrong rationale mislead together ("misleading by similarity").
2. In each cluster, take questions in order of distance to the centroid, and keep the first
   whose zero-shot-CoT rationale ("Let's think step by step.") passes the paper's simple
   heuristics: question <= 60 words, rationale <= 5 reasoning steps (sentences/lines), and an
   extractable answer.
3. The k (question, rationale, answer) triples are the few-shot CoT demos
   (`llmlab.prompt.reasoning.cot_prompt`).
"""
from __future__ import annotations

import re

import numpy as np

from llmlab.prompt.reasoning import ZERO_SHOT_COT, extract_answer


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 100, init: np.ndarray | None = None):
    """Lloyd's algorithm with k-means++ seeding -> (labels, centers). An emptied cluster takes the
    point farthest from its center (so k clusters always come back)."""
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    rng = np.random.default_rng(seed)
    if init is None:  # k-means++ (Arthur & Vassilvitskii 2007)
        centers = [x[rng.integers(n)]]
        for _ in range(k - 1):
            d2 = np.min(((x[:, None] - np.array(centers)[None]) ** 2).sum(-1), axis=1)
            centers.append(x[rng.choice(n, p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(n)])
        centers = np.array(centers, dtype=np.float64)
    else:
        centers = np.array(init, dtype=np.float64)
    labels = None
    for _ in range(iters):
        d = ((x[:, None] - centers[None]) ** 2).sum(-1)
        new = d.argmin(1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                centers[j] = members.mean(0)
            else:
                far = int(d.min(1).argmax())
                centers[j], labels[far] = x[far], j
    return labels, centers


def _steps(rationale: str) -> int:
    return len([s for s in re.split(r"(?<=[.!?])\s+|\n+", rationale.strip()) if s.strip()])


def auto_cot_demos(llm, questions: list[str], k: int = 4, encoder=None, seed: int = 0,
                   max_question_words: int = 60, max_steps: int = 5, max_new_tokens: int = 96) -> list[dict]:
    """k demos {question, rationale, answer}, one per cluster (clusters without a usable
    rationale are skipped, so fewer than k may come back)."""
    if encoder is None:
        from llmlab.rag.embed import SentenceEncoder
        encoder = SentenceEncoder()
    vecs = encoder.encode(questions).numpy().astype(np.float64)
    labels, centers = kmeans(vecs, k, seed)
    demos = []
    for j in range(k):
        members = np.flatnonzero(labels == j)
        order = members[np.argsort(((vecs[members] - centers[j]) ** 2).sum(-1), kind="stable")]
        for i in order:
            q = questions[int(i)]
            if len(q.split()) > max_question_words:
                continue
            rationale = llm.complete(f"Question: {q}\nAnswer: {ZERO_SHOT_COT}", max_new_tokens=max_new_tokens,
                                     stop=["\nQuestion:", "\n\n"]).strip()
            answer = extract_answer(rationale)
            if answer and _steps(rationale) <= max_steps:
                demos.append({"question": q, "rationale": f"{ZERO_SHOT_COT} {rationale}", "answer": answer,
                              "cluster": j})
                break
    return demos
