"""RAFT, RRHF, PRO and Chain of Hindsight (and DPO for reference) from one SFT model on a toy task, 3 seeds.

Task: "a+b=" with a, b in 0..9 (100 questions); per seed, 30 are held out and never trained on.
Model: a random 2-layer LLaMA (64 wide) with a character tokenizer; "SFT" = 10 epochs on the 70
training questions with gold answers (chosen on training-question accuracy alone: about a third to a half
right; the held-out questions were not looked at). Each method then trains from that SFT model on
data made from its own samples (8 per training question, T = 1):
  RAFT: 3 rounds of best-of-8 by exact match, SFT on the right ones;
  RRHF / PRO: rankings of the samples by a graded reward (1 right, else 1/(2 + |x - answer|));
  CoH and DPO: on-policy pairs (a right vs a wrong sample of the same question).
Metric: greedy exact match on the held-out questions and on the training questions.
    python benchmarks/align_more_toy.py [--seeds 0,1,2]
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import statistics

import torch

from llmlab.align.grpo import mean_reward
from llmlab.align.preference_trainer import PreferenceConfig, PreferenceTrainer
from llmlab.align.raft import RAFTConfig, RAFTTrainer, sft_on_pairs
from llmlab.align.ranking_trainer import GOOD, RankingTrainer
from llmlab.align.rewards import exact_match_reward
from llmlab.align.sampled_rankings import graded_arithmetic_reward, on_policy_pairs, sampled_rankings
from llmlab.align.toy import CharTokenizer
from llmlab.model import ModelConfig, Transformer

TOK = CharTokenizer("0123456789+-*=? Aabdgnoswer:\n")


def split(seed: int):
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(10) for b in range(10)]
    random.Random(seed).shuffle(rows)
    return rows[30:], rows[:30]


def accuracy(model, rows, prefix: str = "") -> float:
    rows = [dict(r, prompt=r["prompt"] + prefix) for r in rows]
    return mean_reward(model, TOK, rows, exact_match_reward, 1, 3, temperature=0.0)


def sft_model(seed: int, train):
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(vocab_size=TOK.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=64))
    items = [(TOK.encode(r["prompt"]), TOK.encode(r["answer"]) + [TOK.eos_id]) for r in train]
    sft_on_pairs(m, items, 3e-3, 10, 8, TOK.pad_id, seed)
    return m.eval()


def run(seed: int) -> dict:
    train, held = split(seed)
    sft = sft_model(seed, train)
    out = {"sft": (accuracy(sft, held), accuracy(sft, train))}
    pairs, _ = on_policy_pairs(sft, TOK, train, 8, 3, 1.0, seed, chat=False)
    ranks = sampled_rankings(sft, TOK, train, 8, graded_arithmetic_reward, 3, 1.0, seed)
    ranks = [r for r in ranks if "completions" in r] + [dict(prompt=r["prompt"], completions=[r["chosen"], r["rejected"]],
                                                            rewards=r["rewards"]) for r in ranks if "chosen" in r]
    cfg = dict(learning_rate=1e-3, num_train_epochs=3, per_device_train_batch_size=8, seed=seed)
    for method in ("raft", "rrhf", "pro", "coh", "dpo"):
        torch.manual_seed(seed)
        pol = copy.deepcopy(sft)
        if method == "raft":
            RAFTTrainer(pol, TOK, train, exact_match_reward, RAFTConfig(num_generations=8, prompts_per_round=70, rounds=3,
                        max_completion_length=3, learning_rate=1e-3, num_train_epochs=3, per_device_train_batch_size=8,
                        seed=seed)).train()
        elif method in ("rrhf", "pro"):
            RankingTrainer(pol, None, TOK, ranks, PreferenceConfig(loss_type=method, beta=1.0, **cfg)).train()
        elif method == "coh":
            RankingTrainer(pol, None, TOK, pairs, PreferenceConfig(loss_type="coh", **cfg)).train()
        else:
            PreferenceTrainer(pol, copy.deepcopy(sft), TOK, pairs, PreferenceConfig(loss_type="dpo", beta=0.1, **cfg)).train()
        prefix = GOOD + " " if method == "coh" else ""
        out[method] = (accuracy(pol, held, prefix), accuracy(pol, train, prefix))
    out["data"] = {"pairs": len(pairs), "rankings": len(ranks)}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--quick", action="store_true", help="one seed (the smoke run)")
    args = ap.parse_args()
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(1)
    res = {s: run(s) for s in seeds}
    print("| method | held-out exact match (mean ± std) | per seed | training questions |\n|---|---|---|---|")
    summary = {}
    for m in ("sft", "raft", "rrhf", "pro", "coh", "dpo"):
        h, t = [res[s][m][0] for s in seeds], [res[s][m][1] for s in seeds]
        sd = statistics.stdev(h) if len(h) > 1 else 0.0
        summary[m] = {"heldout": statistics.mean(h), "std": sd, "per_seed": h, "train": statistics.mean(t)}
        print(f"| {m.upper()} | {statistics.mean(h):.3f} ± {sd:.3f} | {', '.join(f'{x:.3f}' for x in h)} | "
              f"{statistics.mean(t):.3f} |")
    print("data per seed:", {s: res[s]["data"] for s in seeds})
    print(json.dumps({"benchmark": "align_more_toy", "ours": summary, "peer": summary["sft"],
                      "ratio": {m: summary[m]["heldout"] / max(summary["sft"]["heldout"], 1e-9) for m in summary}}))


if __name__ == "__main__":
    main()
