"""Fusion-in-decoder vs concatenation as the reader of retrieved passages (llmlab.rag.fid).

  python benchmarks/rag_fid.py [--quick] [--docs 2000] [--n 40] [--k 3] [--seed 7] [--readers concat,fid] [--out items.jsonl]

Items: held-out wiki cloze items (llmlab.eval.tasks.cloze, seed 7; the question is the article's
title plus the sentence up to the blank, as `llmlab rag eval`). Passages: the top-k BM25 chunks
(our BM25, sentence chunks of <= 400 characters of the first --docs extracts) for the question;
all readers get exactly the same passages. Readers, SmolLM2 greedy, 12 tokens, up to the line end:
  concat     "Passage: p1\\np2\\np3\\n\\n<question>" (the `rag eval` retrieval prompt)
  concat_rev the same with the passages in reverse order (order sensitivity of concatenation)
  fid        each "Passage: p_i" its own parallel window, the question and answer attending to all
  replug     "Passage: p_i\\n\\n<question>" run once per passage, next-token distributions mixed with
             softmax(BM25 score) weights (llmlab.rag.replug, tau = 1, its default; fixed in advance)
Scored as `rag eval` (first as many words as the gold, EM and SQuAD token F1). No peer library
ships a decoder-only FiD, so the comparison is reader vs reader on the same retrieval.
The readers run in a rotating order per item (timing under load stays comparable); seconds
are per item. Last line: {"benchmark": "rag_fid", "ours": fid, "peer": concat,
"ratio": {f1, exact_match, items_per_s, replug_f1}} (items_per_s = concat seconds / FiD seconds;
replug_f1 = REPLUG F1 / concat F1).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import torch  # noqa: E402

from llmlab.eval.data import wiki_extracts  # noqa: E402
from llmlab.eval.squad import exact_match, token_f1  # noqa: E402
from llmlab.eval.tasks.cloze import seeded_items  # noqa: E402
from llmlab.rag.bm25 import BM25, tokenize  # noqa: E402
from llmlab.rag.chunking import chunk  # noqa: E402
from llmlab.rag.evaluate import answer_span, completion_item, greedy_line  # noqa: E402
from llmlab.rag.fid import TASK, WINDOW, fid_generate  # noqa: E402
from llmlab.rag.replug import replug_generate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="300 documents, 6 items")
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--out", default="", help="per-item JSONL")
    ap.add_argument("--readers", default="concat,concat_rev,fid,replug", help="comma list; concat and fid always run")
    args = ap.parse_args()
    if args.quick:
        args.docs, args.n = 300, 6
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    ex = wiki_extracts()[:args.docs]
    chunks = [(i, c.text) for i, e in enumerate(ex) for c in chunk(e["extract"], "sentence", 400)]
    bm = BM25([tokenize(t) for _, t in chunks])
    model, tok = load_model_and_tokenizer(args.model)
    items = seeded_items([e["extract"] for e in ex], args.n, args.seed)
    readers = tuple(r for r in ("concat", "concat_rev", "fid", "replug") if r in {"concat", "fid", *args.readers.split(",")})
    sums = {r: {"exact_match": 0.0, "f1": 0.0, "seconds": 0.0} for r in readers}
    gold_in_passages = 0
    out = open(args.out, "w", encoding="utf-8") if args.out else None
    for j, (it, i) in enumerate(items):
        question, answer = completion_item(it, ex[i]["title"])
        top = bm.top_k(tokenize(question), args.k)
        hits = [chunks[d] for d, _ in top]
        gold_in_passages += any(a == i for a, _ in hits)
        passages = [t for _, t in hits]
        texts = {}
        for r in readers[j % len(readers):] + readers[:j % len(readers)]:  # rotate the order so timing under load is fair
            t = time.perf_counter()
            if r == "fid":
                texts[r] = fid_generate(model, tok, question, passages, 12, ("\n",), WINDOW, TASK)
            elif r == "replug":
                texts[r], _ = replug_generate(model, tok, question, passages, [s for _, s in top], 12,
                                              stop=("\n",), template=WINDOW.format(passage="{doc}") + TASK)
            else:
                ps = passages if r == "concat" else passages[::-1]
                texts[r] = greedy_line(model, tok, WINDOW.format(passage="\n".join(ps)) + TASK.format(question=question), 12)
            sums[r]["seconds"] += time.perf_counter() - t
            by_len, _ = answer_span(texts[r], answer)
            sums[r]["exact_match"] += exact_match(by_len, answer)
            sums[r]["f1"] += token_f1(by_len, answer)
        if out:
            out.write(json.dumps({"i": j, "answer": answer, **texts}) + "\n")
            out.flush()
        print(f"{j + 1}/{len(items)} " + " ".join(f"{r} F1 {d['f1'] / (j + 1):.3f}" for r, d in sums.items()),
              file=sys.stderr, flush=True)
    n = max(len(items), 1)
    res = {r: {m: v / n for m, v in d.items()} for r, d in sums.items()}
    print(json.dumps({"benchmark": "rag_fid", "n": len(items), "docs": len(ex), "k": args.k,
                      "gold_article_in_passages": gold_in_passages / n, "ours": res["fid"], "peer": res["concat"],
                      **{name: res[r] for name, r in (("concat_reversed", "concat_rev"), ("replug", "replug")) if r in res},
                      "ratio": {**{m: res["fid"][m] / max(res["concat"][m], 1e-9) for m in ("f1", "exact_match")},
                                "items_per_s": res["concat"]["seconds"] / max(res["fid"]["seconds"], 1e-9),
                                **({"replug_f1": res["replug"]["f1"] / max(res["concat"]["f1"], 1e-9)} if "replug" in res else {})}}))


if __name__ == "__main__":
    main()
