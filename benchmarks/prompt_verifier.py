"""Best-of-N reranked by trained verifiers (ours) vs majority vote (self-consistency, the peer) on the
prompting stage's held-out arithmetic problems, SmolLM2-135M-Instruct, few-shot CoT.

  python benchmarks/prompt_verifier.py [--quick] [--n 6] [--train 30] [--test 20] [--seeds 0,1,2]

Train: N samples (T = 0.7) for each of --train problems drawn with seed 100 (never a test item);
the outcome (ORM) and process (PRM) heads are fit on their last-hidden-state features
(llmlab.prompt.verifier). Test, per seed: --test problems (llmlab.prompt.evaluate.arithmetic_items),
N samples each; accuracy of greedy, majority vote, ORM best-of-N, ORM weighted vote, PRM best-of-N,
and pass@N (any sample right: the ceiling of any reranker).
Last line: {"benchmark": "prompt_verifier", "ours": {...}, "peer": {...}, "ratio": {...}} with
ratio = ORM (and PRM) best-of-N accuracy / majority-vote accuracy, mean over seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import torch  # noqa: E402

from llmlab.prompt.evaluate import ARITH_COT_DEMOS, arithmetic_items  # noqa: E402
from llmlab.prompt.reasoning import cot_prompt, extract_answer  # noqa: E402
from llmlab.rag.evaluate import greedy_line  # noqa: E402
from llmlab.prompt.verifier import (LogisticHead, best_of_n, orm_score, prm_score, sample_solutions,  # noqa: E402
                                    solution_states, step_labels, weighted_vote)


def majority(answers: list[str]) -> str:
    valid = [a for a in answers if a]
    return max(valid, key=lambda a: (valid.count(a), -valid.index(a))) if valid else ""


def collect(model, tok, items, n, seed):
    rows = []
    for j, it in enumerate(items):
        prompt = cot_prompt(it["question"], ARITH_COT_DEMOS)
        sols = sample_solutions(model, tok, prompt, n, seed=seed * 100003 + j)
        rows.append({"item": it, "prompt": prompt, "solutions": sols,
                     "answers": [extract_answer(s) for s in sols],
                     "states": solution_states(model, tok, prompt, sols)})
        print(f"  {j + 1}/{len(items)} {sum(a == it['answer'] for a in rows[-1]['answers'])}/{n} right",
              file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="N=3, 10 training and 4 test problems, one seed (about a minute)")
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--train", type=int, default=30)
    ap.add_argument("--test", type=int, default=20)
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    if args.quick:
        args.n, args.train, args.test, args.seeds = 3, 10, 4, "0"
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    model, tok = load_model_and_tokenizer("smollm2")
    seeds = [int(s) for s in args.seeds.split(",")]
    test_sets = {s: arithmetic_items(args.test, s)[0] for s in seeds}
    held = {it["question"] for items in test_sets.values() for it in items}
    train_items = [it for it in arithmetic_items(args.train + len(held), 100)[0] if it["question"] not in held][:args.train]
    print(f"training samples: {args.train} problems x {args.n}", file=sys.stderr)
    train = collect(model, tok, train_items, args.n, seed=100)
    X_out = torch.stack([last for r in train for last, _ in r["states"]])
    y_out = torch.tensor([float(a == r["item"]["answer"]) for r in train for a in r["answers"]])
    X_step = torch.cat([st for r in train for _, st in r["states"]])
    y_step = torch.tensor([float(v) for r in train for s in r["solutions"]
                           for v in (step_labels(s, r["item"]["answer"]) or [0])])
    orm, prm = LogisticHead(C=0.01).fit(X_out, y_out), LogisticHead(C=0.01).fit(X_step, y_step)
    table = {}
    for s in seeds:
        print(f"seed {s}: {args.test} problems x {args.n}", file=sys.stderr)
        rows = collect(model, tok, test_sets[s], args.n, seed=s)
        acc = {k: 0 for k in ("greedy", "majority", "orm_best", "orm_weighted", "prm_best", "pass_at_n")}
        for r in rows:
            gold, ans = r["item"]["answer"], r["answers"]
            acc["greedy"] += extract_answer(greedy_line(model, tok, r["prompt"], 48)) == gold
            acc["majority"] += majority(ans) == gold
            so, sp = orm_score(orm, r["states"]), prm_score(prm, r["states"])
            acc["orm_best"] += best_of_n(ans, so) == gold
            acc["orm_weighted"] += weighted_vote(ans, so) == gold
            acc["prm_best"] += best_of_n(ans, sp) == gold
            acc["pass_at_n"] += gold in ans
        table[s] = {k: v / len(rows) for k, v in acc.items()}
        print(f"  {table[s]}", file=sys.stderr)
    mean = {k: statistics.mean(t[k] for t in table.values()) for k in next(iter(table.values()))}
    ours = {"orm_best": mean["orm_best"], "prm_best": mean["prm_best"], "orm_weighted": mean["orm_weighted"],
            "per_seed": table, "train": {"problems": args.train, "samples": len(y_out), "positive": float(y_out.mean()),
                                         "steps": len(y_step), "steps_positive": float(y_step.mean())}}
    peer = {"majority": mean["majority"], "greedy": mean["greedy"], "pass_at_n": mean["pass_at_n"]}
    ratio = {k: mean[k] / max(mean["majority"], 1e-9) for k in ("orm_best", "prm_best", "orm_weighted")}
    print(json.dumps({"benchmark": "prompt_verifier", "n": args.n, "seeds": seeds, "test_problems": args.test,
                      "ours": ours, "peer": peer, "ratio": ratio}))


if __name__ == "__main__":
    main()
