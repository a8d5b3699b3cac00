"""Word embeddings: llmlab.embed vs gensim on the same corpus slice and settings.

    python benchmarks/embed.py            # >= 10M tokens (Wikipedia extracts + Gutenberg poetry), 5 epochs
    python benchmarks/embed.py --quick    # 1M tokens, 2 epochs, one seed (about a minute on 2 free cores)

Models: word2vec skip-gram NS, CBOW NS, skip-gram HS, and fastText skip-gram NS; all with dim 100,
window 5, negative 5 (HS: none), min_count 5, sample 1e-3, alpha 0.025, `--workers` threads
(default 2). For each seed, ours and gensim alternate (the order flips every seed).

words_s: corpus tokens x epochs / training seconds (vocabulary building excluded for both: ours
encodes the corpus while counting, gensim looks words up while training). total_s: vocabulary +
training seconds. analogy: questions-words.txt 3CosAdd accuracy over the 30k most frequent
words (gensim's evaluate_word_analogies' method), both sides over the same vocabulary order
(ours; analogy_gorder: gensim's), since equal-count words at rank 30k decide which questions
count; ws353 / simlex: Spearman.
Medians over seeds. Last line: one JSON object; ratios are ours / gensim (higher is better).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmlab.embed import corpus, evaluate, vocab as vocab_mod  # noqa: E402
from llmlab.embed.vectors import WordVectors  # noqa: E402
from llmlab.embed.word2vec import TrainSettings, train  # noqa: E402

MODELS = {"w2v": dict(sg=1, hs=0, negative=5), "cbow": dict(sg=0, hs=0, negative=5),
          "sg_hs": dict(sg=1, hs=1, negative=0), "ft": dict(sg=1, hs=0, negative=5, fasttext=True)}


def in_order(kv: WordVectors, words: list[str]) -> WordVectors:
    """The same vectors with the vocabulary in the order `words` (the same word set)."""
    if len(words) != len(kv.words) or set(words) != set(kv.words):
        raise SystemExit("ours and gensim built different vocabularies: the comparison would be unfair")
    return WordVectors(words, kv.vectors[[kv.index[w] for w in words]])


def quality(kv: WordVectors, orders: dict) -> dict:
    """Both sides are evaluated over the same vocabulary order: 'restricted to the 30k most
    frequent words' depends on how words of equal count are ordered (ours: first occurrence
    first; gensim: last first), and that alone moved gensim's accuracy by ~2 % (docs/embed.md).
    analogy: in our order; analogy_gorder: in gensim's order (both sides, same vectors)."""
    kv, kv_g = in_order(kv, orders["ours"]), in_order(kv, orders["gensim"])
    return {"analogy": evaluate.analogies(kv, restrict=30000)["accuracy"],
            "analogy_gorder": evaluate.analogies(kv_g, restrict=30000)["accuracy"],
            "ws353": evaluate.word_pairs(kv, evaluate.gensim_test_file("wordsim353.tsv"))["spearman"],
            "simlex": evaluate.word_pairs(kv, evaluate.gensim_test_file("simlex999.txt"))["spearman"]}


def vocab_orders(sents) -> dict:
    """Our vocabulary order and gensim's (descending count; ties: gensim puts the word seen
    last first, np.lexsort((-first_seen, -count)) in KeyedVectors.sort_by_descending_frequency)."""
    vocab, _ = vocab_mod.build(sents, min_count=5)
    gorder = np.lexsort((-np.arange(len(vocab)), -vocab.counts))  # ours is first-seen order within ties
    return {"ours": list(vocab.words), "gensim": [vocab.words[i] for i in gorder]}


def run_ours(sents, model: str, args, seed: int, orders: dict) -> dict:
    t0 = time.perf_counter()
    vocab, enc = vocab_mod.build(sents, min_count=5)
    t1 = time.perf_counter()
    s = TrainSettings(vector_size=100, window=5, sample=1e-3, epochs=args.epochs,
                      workers=args.workers, seed=seed, **MODELS[model])
    kv = train(vocab, enc, s, progress=False)
    t2 = time.perf_counter()
    return {"train_s": t2 - t1, "total_s": t2 - t0, **quality(kv, orders)}


def run_gensim(sents, model: str, args, seed: int, orders: dict) -> dict:
    from gensim.models import FastText, Word2Vec

    kw = dict(MODELS[model])
    cls = FastText if kw.pop("fasttext", False) else Word2Vec
    t0 = time.perf_counter()
    m = cls(vector_size=100, window=5, min_count=5, sample=1e-3, workers=args.workers, seed=seed, **kw)
    m.build_vocab(sents)
    t1 = time.perf_counter()
    m.train(sents, total_examples=m.corpus_count, epochs=args.epochs)
    t2 = time.perf_counter()
    kv = WordVectors(list(m.wv.index_to_key), m.wv.vectors)  # vectors: fastText's word + n-gram mean
    if kv.words != orders["gensim"]:
        raise SystemExit("gensim's vocabulary order is not the one vocab_orders() predicts")
    return {"train_s": t2 - t1, "total_s": t2 - t0, **quality(kv, orders)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tokens", type=int, default=None, help="corpus tokens (default 1M quick, 10M full)")
    ap.add_argument("--epochs", type=int, default=None, help="default 2 quick, 5 full")
    ap.add_argument("--seeds", type=int, default=None, help="default 1 quick, 3 full")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--models", default="w2v,cbow,sg_hs,ft")
    args = ap.parse_args()
    args.tokens = args.tokens or (1_000_000 if args.quick else 10_000_000)
    args.epochs = args.epochs or (2 if args.quick else 5)
    args.seeds = args.seeds or (1 if args.quick else 3)
    models = [m for m in args.models.split(",") if m]
    from llmlab.embed import kernel
    kernel.load()  # compile before timing
    sents = list(corpus.iter_sentences(["wiki_en", "poetry_en"], max_tokens=args.tokens))
    n_tok = sum(map(len, sents))
    print(f"corpus: {n_tok:,} tokens, {len(sents):,} sentences; epochs {args.epochs}, workers {args.workers}, "
          f"seeds {args.seeds}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus", file=sys.stderr)
    orders = vocab_orders(sents)
    runs: dict = {side: {m: [] for m in models} for side in ("ours", "peer")}
    for seed in range(1, args.seeds + 1):
        for m in models:
            order = [("ours", run_ours), ("peer", run_gensim)]
            for side, fn in (order if seed % 2 else order[::-1]):
                r = fn(sents, m, args, seed, orders)
                r["words_s"] = n_tok * args.epochs / r["train_s"]
                runs[side][m].append(r)
                print(f"seed {seed} {m:6s} {side}: {r['words_s']:>10,.0f} words/s  train {r['train_s']:6.1f}s  "
                      f"total {r['total_s']:6.1f}s  analogy {r['analogy']:.4f} (gensim order {r['analogy_gorder']:.4f})  ws353 {r['ws353']:.4f}  "
                      f"simlex {r['simlex']:.4f}", file=sys.stderr)
    for m in models:  # per-seed ratios and mean +- std: at accuracy ~0.1 one seed is noisy
        for k in ("analogy", "analogy_gorder"):
            o, p = ([r[k] for r in runs[side][m]] for side in ("ours", "peer"))
            sd = (lambda x: statistics.stdev(x) if len(x) > 1 else 0.0)
            print(f"{m} {k}: ours {statistics.mean(o):.4f} +- {sd(o):.4f}, gensim {statistics.mean(p):.4f} +- "
                  f"{sd(p):.4f}, per-seed ratio {' '.join(f'{a / b:.3f}' if b else 'n/a' for a, b in zip(o, p))}", file=sys.stderr)
    med = {side: {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in d.items()}
           for side, d in runs.items()}
    ours = {f"{m}_{k}": round(v, 4) for m, d in med["ours"].items() for k, v in d.items()}
    peer = {f"{m}_{k}": round(v, 4) for m, d in med["peer"].items() for k, v in d.items()}
    ratio = {}
    for m in models:
        o, p = med["ours"][m], med["peer"][m]
        ratio[f"{m}_words_s"] = round(o["words_s"] / p["words_s"], 3)
        ratio[f"{m}_total_s"] = round(p["total_s"] / o["total_s"], 3)
        for k in ("analogy", "analogy_gorder", "ws353", "simlex"):
            ratio[f"{m}_{k}"] = round(o[k] / p[k], 3) if p[k] > 0 else None
    print(json.dumps({"benchmark": "embed", "tokens": n_tok, "epochs": args.epochs, "seeds": args.seeds,
                      "workers": args.workers, "load_avg": round(os.getloadavg()[0], 1),
                      "ours": ours, "peer": peer, "ratio": ratio}))


if __name__ == "__main__":
    main()
