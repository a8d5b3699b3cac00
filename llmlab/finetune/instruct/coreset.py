"""Coreset selection of instruction data: k-center greedy on sentence embeddings (Sener & Savarese
2018, "Active learning for convolutional neural networks: a core-set approach"; used for instruction
data by Chen et al. 2023, "Maybe only 0.5% data is needed", the notes' [184]).

k-center picks k examples so that every example is close to a chosen one: it minimises the covering
radius max_i min_{c in C} ||x_i - x_c||. The greedy rule (start from one point, then repeatedly add the
point farthest from everything chosen) is within a factor 2 of the optimal radius (Gonzalez 1985).
Embeddings default to MiniLM (the RAG encoder) of the user turn; any (n, d) tensor works.
"""
from __future__ import annotations

import random

import torch

from llmlab.errors import UserError


def k_center_greedy(x: torch.Tensor, k: int, first: int | None = None, seed: int = 0) -> list[int]:
    """Indices of k centres, in the order chosen. first: the starting point (default: seeded random)."""
    n = x.shape[0]
    if not 1 <= k <= n:
        raise UserError(f"coreset: k must be in [1, {n}], got {k}")
    x = x.float()
    start = random.Random(seed).randrange(n) if first is None else first
    chosen = [start]
    dist = torch.cdist(x, x[start:start + 1]).squeeze(1)
    for _ in range(k - 1):
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = torch.minimum(dist, torch.cdist(x, x[nxt:nxt + 1]).squeeze(1))
    return chosen


def covering_radius(x: torch.Tensor, centres: list[int]) -> float:
    """max over points of the distance to the nearest centre."""
    return float(torch.cdist(x.float(), x[centres].float()).min(1).values.max())


def instruction_texts(records: list[dict]) -> list[str]:
    """The user turns of chat records ({"messages"}) or the prompt/instruction field."""
    out = []
    for r in records:
        if "messages" in r:
            out.append(" ".join(m["content"] for m in r["messages"] if m.get("role") == "user"))
        else:
            out.append(str(r.get("prompt") or r.get("instruction") or ""))
    return out


def task_quotas(tasks: list[str], k: int) -> dict[str, int]:
    """k split over the tasks in proportion to their counts (largest remainder; ties by task name)."""
    counts = {t: tasks.count(t) for t in sorted(set(tasks))}
    exact = {t: k * c / len(tasks) for t, c in counts.items()}
    quota = {t: int(e) for t, e in exact.items()}
    for t in sorted(counts, key=lambda t: (quota[t] - exact[t], t))[:k - sum(quota.values())]:
        quota[t] += 1
    return quota


def select(records: list[dict], k: int, method: str = "kcenter", seed: int = 0, embed=None) -> list[dict]:
    """k records by k-center greedy on embeddings, or a seeded random subset (method=random).
    method=kcenter_task: per-task quotas in proportion to the pool (records' "task" field), k-center
    greedy within each task (plain k-center pulls towards the most spread-out task; docs/finetune.md).
    `embed(texts) -> (n, d) tensor` is the caller's sentence encoder (e.g. llmlab.rag.embed's
    SentenceEncoder().encode; passed in because retrieval is a later stage than fine-tuning)."""
    if not 1 <= k <= len(records):
        raise UserError(f"coreset: k must be in [1, {len(records)}], got {k}")
    if method == "random":
        return random.Random(seed).sample(records, k)
    if method not in ("kcenter", "kcenter_task"):
        raise UserError(f"coreset method must be kcenter, kcenter_task or random, got {method!r}")
    if embed is None:
        raise UserError(f"coreset: method={method} needs embed= (a sentence encoder, e.g. SentenceEncoder().encode)")
    x = embed(instruction_texts(records))
    if method == "kcenter":
        return [records[i] for i in k_center_greedy(x, k, seed=seed)]
    if any("task" not in r for r in records):
        raise UserError("coreset: method=kcenter_task needs a 'task' field in every record")
    tasks, out = [str(r["task"]) for r in records], []
    for t, q in task_quotas(tasks, k).items():
        idx = [i for i, u in enumerate(tasks) if u == t]
        out += [records[idx[j]] for j in (k_center_greedy(x[idx], q, seed=seed) if q else [])]
    return out
