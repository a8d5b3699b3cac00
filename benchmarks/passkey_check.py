#!/usr/bin/env python
"""Passkey prompt and scoring checked on a real model: SmolLM2-135M-Instruct (which has induction
heads) on llmlab.eval.passkey's examples. If it retrieves the keys, the prompt format and the
teacher-forced scoring are sound, and a small model's 0 % is the model's (docs/model.md, "Long
context"). Keys with all-distinct digits and with a repeated digit are counted apart (a one-token
induction copy is ambiguous after a repeated digit). Last line: JSON.

  OMP_NUM_THREADS=1 python benchmarks/passkey_check.py --lengths 128 --per-depth 4
"""
from __future__ import annotations

import argparse
import json
import random
import time



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--per-depth", type=int, default=4, help="keys per depth (depths 0, .25, .5, .75, 1)")
    ap.add_argument("--quick", action="store_true", help="128 tokens, one key per depth")
    args = ap.parse_args()
    if args.quick:
        args.lengths, args.per_depth = [128], 1
    from llmlab.device import setup_threads
    from llmlab.eval.passkey import PasskeyTask, retrieved
    from llmlab.model.load import load_model
    from llmlab.tokenizer.bpe import load_tokenizer
    setup_threads()
    model, path = load_model("smollm2")
    model.eval()
    task = PasskeyTask(load_tokenizer(path))
    out = {}
    for length in args.lengths:
        rng = random.Random(f"smol-{length}")
        ex = [task.make(length, d, rng) for d in (0.0, 0.25, 0.5, 0.75, 1.0) for _ in range(args.per_depth)]
        t = time.perf_counter()
        hits = retrieved(model, ex, batch_size=4)
        distinct = [len(set(e.key)) == len(e.key) for e in ex]
        row = {"retrieved": sum(hits) / len(hits), "n": len(hits),
               "distinct_digit_keys": [sum(h for h, d in zip(hits, distinct) if d), sum(distinct)],
               "repeated_digit_keys": [sum(h for h, d in zip(hits, distinct) if not d), len(ex) - sum(distinct)],
               "seconds": round(time.perf_counter() - t, 1)}
        print(length, row, flush=True)
        out[f"passkey_{length}"] = row["retrieved"]
    print(json.dumps({"benchmark": "passkey_check", "ours": out, "peer": {}, "ratio": {}}))


if __name__ == "__main__":
    main()
