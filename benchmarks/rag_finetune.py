"""Dense retrieval before and after fine-tuning MiniLM on our own pairs (llmlab.rag.finetune).

  python benchmarks/rag_finetune.py [--docs 300] [--queries 100] [--pairs 2000] [--steps 15] [--seeds 0,1,2]

Evaluation: the first --docs extracts (by title) are the corpus, --queries held-out cloze queries
drawn from them (seed 1234, as benchmarks/rag.py); documents and queries embedded at most 128 tokens.
Training pairs: (cloze query, its extract) drawn from extracts 2000 onwards only, so no evaluation
article (nor a sentence of one) is ever trained on; per seed a fresh copy of the base encoder, its
own pair draw and batch order. Metrics: dense recall@1/@5, nDCG@10 (cosine, exact search).
Last line: {"benchmark": "rag_finetune", "ours": tuned (mean over seeds), "peer": base, "ratio"}.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import torch  # noqa: E402

from llmlab.eval.data import wiki_extracts  # noqa: E402
from llmlab.rag.embed import SentenceEncoder  # noqa: E402
from llmlab.rag.evaluate import cloze_queries, ndcg_at_k, recall_at_k  # noqa: E402
from llmlab.rag.finetune import finetune_encoder  # noqa: E402


def dense_metrics(enc, docs, queries, golds) -> dict:
    enc.max_length = 128
    D, Q = enc.encode(docs), enc.encode(queries)
    runs = torch.topk(Q @ D.T, 10, dim=1).indices.tolist()
    return {"recall_at_1": recall_at_k(runs, golds, 1), "recall_at_5": recall_at_k(runs, golds, 5),
            "ndcg_at_10": ndcg_at_k(runs, golds, 10)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--quick", action="store_true", help="smoke run: 100 docs, 30 queries, 200 pairs, 3 steps, one seed")
    args = ap.parse_args()
    if args.quick:
        args.docs, args.queries, args.pairs, args.steps, args.seeds = 100, 30, 200, 3, "0"
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    texts = [e["extract"] for e in wiki_extracts()]
    docs = texts[:args.docs]
    test = cloze_queries(docs, args.queries, seed=1234)
    queries, golds = [q for q, _ in test], [g for _, g in test]
    base = dense_metrics(SentenceEncoder(), docs, queries, golds)
    print(f"base: {base}", file=sys.stderr, flush=True)
    tuned = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        train_texts = texts[2000:]
        pairs = [(q, train_texts[i]) for q, i in cloze_queries(train_texts, args.pairs, seed=seed)]
        enc, t = SentenceEncoder(), time.perf_counter()
        losses = finetune_encoder(enc, pairs, steps=args.steps, batch_size=args.batch, lr=args.lr, seed=seed,
                                  progress=lambda s, v: print(f"  seed {seed} step {s + 1}/{args.steps} loss {v:.3f}",
                                                              file=sys.stderr, flush=True))
        tuned[seed] = {**dense_metrics(enc, docs, queries, golds), "loss_first": losses[0],
                       "loss_last5": statistics.mean(losses[-5:]), "train_s": time.perf_counter() - t}
        print(f"seed {seed}: {tuned[seed]}", file=sys.stderr, flush=True)
    mean = {k: statistics.mean(r[k] for r in tuned.values()) for k in base}
    print(json.dumps({"benchmark": "rag_finetune", "docs": len(docs), "queries": len(queries), "pairs": args.pairs,
                      "steps": args.steps, "batch": args.batch, "ours": {**mean, "per_seed": tuned}, "peer": base,
                      "ratio": {k: mean[k] / max(base[k], 1e-9) for k in base}}))


if __name__ == "__main__":
    main()
