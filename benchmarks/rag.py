"""Retrieval pipeline, ours vs sentence-transformers + FAISS + bm25s, on the packaged Wikipedia extracts.

  python benchmarks/rag.py [--quick] [--docs N] [--queries Q]   (--quick: 300 / 50 / 5 fine-tune steps, a smoke run)

One document = one extract (both encoders truncate at 256 tokens). Steps, alternating ours/peer:
  embed    the documents in blocks of 256, ours (llmlab.model.encoder) and sentence-transformers
           alternating block by block; docs/s = documents / summed block times
  bm25     index the same token lists (llmlab.rag.bm25.tokenize) with ours and bm25s; time the
           queries one at a time (top 50), alternating rounds; queries/s = queries / median round time
           (bm25s with n_threads=0, its default: in the calling thread, as ours)
  recall   held-out cloze queries (a sentence of the article with a span removed); ours = hybrid of our
           dense top 50 and our BM25 top 50, fused by weighted RRF (ranks) or by the convex combination
           of min-max scores (llmlab.rag.bm25.convex_fusion), with the fusion, the BM25 weight (from
           DEV_WEIGHTS) and the dense side (our base encoder, or our encoder fine-tuned on pairs from
           articles that hold no test or dev query, llmlab.rag.finetune) chosen on a separate dev
           draw (4x the test queries, other articles, another seed), never on the test queries.
           Peer = the better of its two retrievers (ST+FAISS dense, bm25s) picked on the test queries
           themselves (an oracle choice, in the peer's favour): ratio `recall_at_5`. Like for like,
           the peer's own hybrid with its fusion and weight chosen by the same rule on the same dev
           queries: ratio `recall_at_5_hybrid_vs_hybrid`. Both at k=5, same documents; nDCG@10 likewise.
  --dump   writes every query's scored top 50 per retriever (test and dev) to read the misses.
Last line: {"benchmark": "rag", ..., "ratio": {embed_docs_s, bm25_queries_s, recall_at_5}} (ours / peer,
higher is better). Figures from a shared CPU are labelled so in docs/rag.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from llmlab.eval.data import wiki_extracts  # noqa: E402
from llmlab.model.encoder import minilm_dir  # noqa: E402
from llmlab.rag.embed import SentenceEncoder  # noqa: E402
from llmlab.rag.bm25 import BM25, convex_fusion, reciprocal_rank_fusion, tokenize  # noqa: E402
from llmlab.rag.evaluate import cloze_queries, ndcg_at_k, recall_at_k  # noqa: E402


def embed_both(texts, ours, peer, block=256):
    t_ours = t_peer = 0.0
    eo, ep = [], []
    for s in range(0, len(texts), block):
        part = texts[s:s + block]
        t = time.perf_counter()
        eo.append(ours.encode(part).numpy())
        t_ours += time.perf_counter() - t
        t = time.perf_counter()
        ep.append(peer.encode(part, batch_size=32, convert_to_numpy=True, normalize_embeddings=True))
        t_peer += time.perf_counter() - t
        print(f"  embedded {s + len(part)}/{len(texts)}", file=sys.stderr, flush=True)
    return np.concatenate(eo), np.concatenate(ep), t_ours, t_peer


def dense_top(vecs, qvecs, k):
    """Each query's top k as (document, cosine) pairs (FAISS exact inner product)."""
    import faiss
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(np.ascontiguousarray(vecs, dtype=np.float32))
    sims, ids = index.search(np.ascontiguousarray(qvecs, dtype=np.float32), k)
    return [list(zip(i.tolist(), d.tolist())) for i, d in zip(ids, sims)]


def bm25s_top(peer_bm, qtoks, k=50):
    # n_threads=0 (bm25s's default) answers in the calling thread; n_threads=1 builds a thread pool per call,
    # which under load cost the peer up to ~50 ms a query (the ratio was 79 in one run): not like for like
    out = []
    for q in qtoks:
        docs, scores = peer_bm.retrieve([q], k=k, show_progress=False, n_threads=0)
        out.append([(d, s) for d, s in zip(docs[0].tolist(), scores[0].tolist()) if s > 0])
    return out


def ids(runs):
    return [[d for d, _ in r] for r in runs]


# BM25 weight relative to the dense side's 1; the grid reached 8 after the 400-query dev draw chose 4, its old edge
DEV_WEIGHTS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
FUSIONS = ("rrf", "convex")


def fuse(kind, dense_runs, bm25_runs, w):
    """Hybrid rankings: weighted RRF on ranks, or the convex combination of min-max scores (keeps margins)."""
    if kind == "rrf":
        return [[d for d, _ in reciprocal_rank_fusion([a, b], weights=[1.0, w])]
                for a, b in zip(ids(dense_runs), ids(bm25_runs))]
    return [[d for d, _ in convex_fusion([a, b], weights=[1.0, w])] for a, b in zip(dense_runs, bm25_runs)]


def choose_hybrid(dense_by_encoder: dict, bm25_runs, golds) -> tuple[str, str, float, dict]:
    """The (fusion, encoder, BM25 weight) with the best dev recall@5 (then nDCG@10, then the base
    encoder, then RRF, then the weight closest to 1)."""
    import math
    table = {}
    for kind in FUSIONS:
        for enc, dense_runs in dense_by_encoder.items():
            for w in DEV_WEIGHTS:
                fused = fuse(kind, dense_runs, bm25_runs, w)
                table[kind, enc, w] = (recall_at_k(fused, golds, 5), ndcg_at_k(fused, golds, 10))
    best = max(table, key=lambda c: (*table[c], c[1] == "base", c[0] == "rrf", -abs(math.log(c[2]))))
    return (*best, {f"{f}:{e}:{w}": {"recall_at_5": r, "ndcg_at_10": n} for (f, e, w), (r, n) in table.items()})


def scores(runs_by_name: dict, golds) -> dict:
    out = {}
    for name, runs in runs_by_name.items():
        out[name] = {"recall_at_1": recall_at_k(runs, golds, 1), "recall_at_5": recall_at_k(runs, golds, 5),
                     "ndcg_at_10": ndcg_at_k(runs, golds, 10)}
        print(f"  {name:<14} " + " ".join(f"{k}={v:.3f}" for k, v in out[name].items()), file=sys.stderr)
    return out


def write_dump(path, test, dev, chosen):
    """Every query's scored top-50 per retriever, test and dev, for reading the misses afterwards."""
    def part(queries, golds, runs):
        return {"queries": queries, "golds": golds, "runs": {k: v for k, v in runs.items() if v is not None}}
    with open(path, "w") as f:
        json.dump({"test": part(*test), "dev": part(*dev), "chosen": chosen}, f)


def tuned_encoder(all_texts, exclude: set, steps: int, seed: int = 0):
    """Our encoder fine-tuned (llmlab.rag.finetune, MNRL) on (cloze sentence, article) pairs from
    articles outside `exclude` (the test and dev queries' articles): the corpus's own text, no labels."""
    from llmlab.rag.finetune import finetune_encoder
    pairs = [(q, all_texts[i]) for q, i in cloze_queries(all_texts, 3000, seed=seed) if i not in exclude][:2000]
    enc = SentenceEncoder(batch_size=32)
    finetune_encoder(enc, pairs, steps=steps, batch_size=16, lr=2e-5, seed=seed,
                     progress=lambda s, v: print(f"  fine-tune step {s + 1}/{steps} loss {v:.3f}", file=sys.stderr,
                                                 flush=True))
    return enc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a smoke run: 300 documents, 50 queries, 5 fine-tune steps "
                    "(about a minute; until session 15 it meant --docs 1000 --queries 100)")
    ap.add_argument("--docs", type=int, default=0)
    ap.add_argument("--queries", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--finetune-steps", type=int, default=None, help="default 15 (5 with --quick); 0: the hybrid uses the base encoder only")
    ap.add_argument("--dev-queries", type=int, default=0, help="dev draw size (default 4x the test queries)")
    ap.add_argument("--dump", default="", help="write every query's top-50 lists per retriever (test and dev) to this JSON")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import bm25s
    from sentence_transformers import SentenceTransformer

    n_docs = args.docs or (300 if args.quick else 10000)
    n_q = args.queries or (50 if args.quick else 500)
    if args.finetune_steps is None:
        args.finetune_steps = 5 if args.quick else 15
    all_texts = [e["extract"] for e in wiki_extracts()]
    texts = all_texts[:n_docs]
    queries = cloze_queries(texts, n_q, seed=1234)
    qtexts, golds = [q for q, _ in queries], [g for _, g in queries]
    test_articles = set(golds)  # dev queries come from other articles, drawn with another seed
    # the dev draw's first items do not depend on its size (one seeded pass), so a larger draw extends a smaller one
    n_dev = args.dev_queries or 4 * n_q
    dev = [(q, g) for q, g in cloze_queries(texts, n_q + n_dev, seed=4321) if g not in test_articles][:n_dev]
    print(f"{len(texts)} documents, {len(queries)} queries, {torch.get_num_threads()} thread(s)", file=sys.stderr)

    ours_enc = SentenceEncoder(batch_size=32)
    peer_enc = SentenceTransformer(str(minilm_dir()), device="cpu")
    vo, vp, t_ours, t_peer = embed_both(texts, ours_enc, peer_enc)
    cos = float((vo * vp).sum(1).min())

    toks = [tokenize(t) for t in texts]
    qtoks = [tokenize(q) for q in qtexts]
    t = time.perf_counter()
    ours_bm = BM25(toks)
    t_build_ours = time.perf_counter() - t
    t = time.perf_counter()
    peer_bm = bm25s.BM25()
    peer_bm.index(toks, show_progress=False)
    t_build_peer = time.perf_counter() - t
    r_ours, r_peer = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        bm_ours = [[d for d, _ in ours_bm.top_k(q, 50)] for q in qtoks]
        r_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        bm_peer = [peer_bm.retrieve([q], k=50, show_progress=False, n_threads=0)[0][0].tolist() for q in qtoks]
        r_peer.append(time.perf_counter() - t)

    bm_ours, bm_peer = [ours_bm.top_k(q, 50) for q in qtoks], bm25s_top(peer_bm, qtoks)  # scored, after timing
    qo = ours_enc.encode(qtexts).numpy()
    qp = peer_enc.encode(qtexts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True)
    dense_ours, dense_peer = dense_top(vo, qo, 50), dense_top(vp, qp, 50)
    dev_q, dev_golds = [q for q, _ in dev], [g for _, g in dev]
    dev_dense = {"base": dense_top(vo, ours_enc.encode(dev_q).numpy(), 50)}
    tuned_dense = None
    if args.finetune_steps:
        t = time.perf_counter()
        tuned = tuned_encoder(all_texts, test_articles | set(dev_golds), args.finetune_steps)
        vt = tuned.encode(texts).numpy()
        dev_dense["tuned"] = dense_top(vt, tuned.encode(dev_q).numpy(), 50)
        tuned_dense = dense_top(vt, tuned.encode(qtexts).numpy(), 50)
        print(f"  fine-tuned encoder: trained and embedded in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    dev_bm25 = [ours_bm.top_k(tokenize(q), 50) for q in dev_q]
    fusion, encoder, w_bm25, dev_table = choose_hybrid(dev_dense, dev_bm25, dev_golds)
    print(f"  dev ({len(dev)} queries): {fusion}, encoder {encoder}, BM25 weight {w_bm25} chosen; {dev_table}", file=sys.stderr)
    # the peer pipeline's own fusion and weight, chosen by the same rule on the same dev queries (like for like)
    peer_dev_dense = dense_top(vp, peer_enc.encode(dev_q, batch_size=32, convert_to_numpy=True, normalize_embeddings=True), 50)
    peer_dev_bm25 = bm25s_top(peer_bm, [tokenize(q) for q in dev_q])
    fusion_peer, _, w_peer, _ = choose_hybrid({"base": peer_dev_dense}, peer_dev_bm25, dev_golds)

    runs = {"hybrid": fuse(fusion, tuned_dense if encoder == "tuned" else dense_ours, bm_ours, w_bm25),
            "hybrid_rrf_w1": fuse("rrf", dense_ours, bm_ours, 1.0), "dense": ids(dense_ours)}
    if tuned_dense is not None:
        runs["dense_tuned"] = ids(tuned_dense)
    runs |= {"bm25": ids(bm_ours), "peer_dense": ids(dense_peer), "peer_bm25s": ids(bm_peer),
             "peer_hybrid": fuse(fusion_peer, dense_peer, bm_peer, w_peer)}
    metrics = scores(runs, golds)
    if args.dump:
        write_dump(args.dump, (qtexts, golds, {"bm25": bm_ours, "dense_base": dense_ours, "dense_tuned": tuned_dense,
                                                "peer_dense": dense_peer, "peer_bm25s": bm_peer}),
                   (dev_q, dev_golds, {"bm25": dev_bm25, **{f"dense_{e}": r for e, r in dev_dense.items()},
                                       "peer_dense": peer_dev_dense, "peer_bm25s": peer_dev_bm25}),
                   {"fusion": fusion, "encoder": encoder, "bm25_weight": w_bm25, "peer_fusion": fusion_peer,
                    "peer_bm25_weight": w_peer})
    peer_best = max(metrics["peer_dense"]["recall_at_5"], metrics["peer_bm25s"]["recall_at_5"])
    ours = {"embed_docs_s": len(texts) / t_ours, "bm25_queries_s": len(qtoks) / statistics.median(r_ours),
            "bm25_build_s": t_build_ours, "recall_at_5": metrics["hybrid"]["recall_at_5"],
            "ndcg_at_10": metrics["hybrid"]["ndcg_at_10"], "min_cosine_vs_peer": cos, "fusion": fusion,
            "bm25_weight": w_bm25, "hybrid_encoder": encoder, "finetune_steps": args.finetune_steps,
            "dev_choices": dev_table, "retrievers": {k: v for k, v in metrics.items() if not k.startswith("peer")}}
    peer = {"embed_docs_s": len(texts) / t_peer, "bm25_queries_s": len(qtoks) / statistics.median(r_peer),
            "bm25_build_s": t_build_peer, "recall_at_5": peer_best, "fusion": fusion_peer, "bm25_weight": w_peer,
            "recall_at_5_hybrid": metrics["peer_hybrid"]["recall_at_5"],
            "retrievers": {k: v for k, v in metrics.items() if k.startswith("peer")}}
    ratio = {k: ours[k] / peer[k] for k in ("embed_docs_s", "bm25_queries_s", "recall_at_5")}
    # like for like: each pipeline's hybrid with its fusion weight chosen on the same dev queries by the same rule
    ratio["recall_at_5_hybrid_vs_hybrid"] = ours["recall_at_5"] / max(peer["recall_at_5_hybrid"], 1e-12)
    print(json.dumps({"benchmark": "rag", "docs": len(texts), "queries": len(qtoks), "dev_queries": len(dev), "threads": torch.get_num_threads(),
                      "ours": ours, "peer": peer, "ratio": ratio}))


if __name__ == "__main__":
    main()
