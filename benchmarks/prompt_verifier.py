"""Best-of-N reranked by trained verifiers (ours) vs majority vote (self-consistency, the peer) on
held-out arithmetic problems, SmolLM2-135M-Instruct, few-shot CoT.

  python benchmarks/prompt_verifier.py [--quick] [--n 6] [--train 30] [--test 20] [--seeds 0,1,2] [--digits 1]

Problems: the eval stage's arithmetic templates (4 operations, asked plainly or as word problems,
llmlab.eval.tasks.arithmetic) with operands of --digits digits. With 2 digits (the eval task's) the
135M model's samples are almost never right (0 of 15 and 0 of 50 training samples in two tries), so
a verifier has no positive example to learn from; 1-digit operands (the default) give a mix.
Train: N samples (T = 0.7) for each of --train problems drawn with seed 100; the outcome (ORM) and
process (PRM) heads (C = 0.01, fixed in advance) are fit on last-hidden-state features
(llmlab.prompt.verifier). Test, per seed: --test problems drawn with that seed, N samples each.
Held out: a training problem never shares (operation, x, y) with any test problem of any seed (so
"What is 6 times 3?" and its word-problem forms are on one side only), and no problem repeats a
few-shot demo. The verifiers are trained once; the seeds vary the test problems and their samples.
Accuracy of: greedy, the first sample, majority vote, ORM best-of-N / weighted vote, PRM best-of-N /
weighted vote, and pass@N (any sample right: the ceiling of any reranker).
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

import random  # noqa: E402

from llmlab.eval.tasks.arithmetic import _NAMES, _OBJECTS, _OPERATIONS, _WORD_PROBLEMS  # noqa: E402
from llmlab.prompt.evaluate import ARITH_COT_DEMOS  # noqa: E402
from llmlab.prompt.reasoning import cot_prompt, extract_answer  # noqa: E402
from llmlab.rag.evaluate import greedy_line  # noqa: E402
from llmlab.prompt.verifier import (LogisticHead, best_of_n, orm_score, prm_score, sample_solutions,  # noqa: E402
                                    solution_states, step_labels, weighted_vote)


def problems(n: int, seed: int, digits: int, exclude: set = frozenset()) -> list[dict]:
    """n distinct problems as llmlab.eval.tasks.arithmetic.make_problem draws them, operands of
    `digits` digits; none whose (operation, x, y) is in `exclude` or whose question is a CoT demo."""
    rng, lo, hi = random.Random(seed), 10 ** (digits - 1) + (digits == 1), 10 ** digits - 1
    demos, seen, out = {d["question"] for d in ARITH_COT_DEMOS}, set(exclude), []
    for _ in range(100000):
        kind = rng.randrange(8)
        op = list(_OPERATIONS)[kind % 4]
        a, b = rng.randint(lo, hi), rng.randint(2, 9 if op in ("times", "divided by") else hi)
        x, y, answer = _OPERATIONS[op](a, b)
        template = f"What is {{x}} {op} {{y}}?" if kind < 4 else _WORD_PROBLEMS[op]
        q = template.format(x=x, y=y, name=rng.choice(_NAMES), obj=rng.choice(_OBJECTS))
        if (op, x, y) not in seen and q not in demos:
            seen.add((op, x, y))
            out.append({"question": q, "answer": str(answer), "key": (op, x, y)})
            if len(out) == n:
                return out
    raise ValueError(f"only {len(out)} distinct {digits}-digit problems")


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
    ap.add_argument("--quick", action="store_true", help="N=3, 8 training and 3 test problems, one seed (about a minute)")
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--train", type=int, default=30)
    ap.add_argument("--test", type=int, default=20)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--digits", type=int, default=1, choices=(1, 2))
    args = ap.parse_args()
    if args.quick:
        args.n, args.train, args.test, args.seeds = 3, 8, 3, "0"
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    model, tok = load_model_and_tokenizer("smollm2")
    seeds = [int(s) for s in args.seeds.split(",")]
    test_sets = {s: problems(args.test, s, args.digits) for s in seeds}
    held = {it["key"] for items in test_sets.values() for it in items}
    train_items = problems(args.train, 100, args.digits, exclude=held)
    assert not held & {it["key"] for it in train_items}
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
        acc = {k: 0 for k in ("greedy", "first_sample", "majority", "orm_best", "orm_weighted", "prm_best",
                              "prm_weighted", "pass_at_n")}
        for r in rows:
            gold, ans = r["item"]["answer"], r["answers"]
            acc["greedy"] += extract_answer(greedy_line(model, tok, r["prompt"], 48)) == gold
            acc["first_sample"] += ans[0] == gold
            acc["majority"] += majority(ans) == gold
            so, sp = orm_score(orm, r["states"]), prm_score(prm, r["states"])
            acc["orm_best"] += best_of_n(ans, so) == gold
            acc["orm_weighted"] += weighted_vote(ans, so) == gold
            acc["prm_best"] += best_of_n(ans, sp) == gold
            acc["prm_weighted"] += weighted_vote(ans, sp) == gold
            acc["pass_at_n"] += gold in ans
        table[s] = {k: v / len(rows) for k, v in acc.items()}
        print(f"  {table[s]}", file=sys.stderr)
    mean = {k: statistics.mean(t[k] for t in table.values()) for k in next(iter(table.values()))}
    ours = {k: mean[k] for k in ("orm_best", "prm_best", "orm_weighted", "prm_weighted")} | {
            "per_seed": table, "train": {"problems": args.train, "samples": len(y_out), "positive": float(y_out.mean()),
                                         "steps": len(y_step), "steps_positive": float(y_step.mean())}}
    peer = {k: mean[k] for k in ("majority", "greedy", "first_sample", "pass_at_n")}
    ratio = {k: mean[k] / max(mean["majority"], 1e-9) for k in ("orm_best", "prm_best", "orm_weighted", "prm_weighted")}
    print(json.dumps({"benchmark": "prompt_verifier", "n": args.n, "seeds": seeds, "test_problems": args.test,
                      "digits": args.digits,
                      "ours": ours, "peer": peer, "ratio": ratio}))


if __name__ == "__main__":
    main()
