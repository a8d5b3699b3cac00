"""Elo from pairwise judgements on synthetic games: how fast ratings reach the true order.

8 players with true ratings 50 points apart (1000..1350); each game draws two players at random and
the winner from Elo's own model P(a wins) = 1 / (1 + 10^((R_b - R_a)/400)). For each number of games
and 20 seeds: Kendall tau between fitted and true ratings and the RMSE of the centred ratings, for
sequential Elo in one order (K = 32, the textbook setting), Elo averaged over 20 orders (K = 4), and
the order-free Bradley-Terry MLE (the reference: "peer").
    python benchmarks/align_elo.py [--quick]
Last line: one JSON object (the benchmark format).
"""
from __future__ import annotations

import json
import math
import random
import statistics
import sys

from llmlab.align.elo import bradley_terry_ratings, elo_ratings, expected_score

TRUE = {f"m{i}": 1000.0 + 50 * i for i in range(8)}


def games(n: int, seed: int) -> list:
    rng, names, out = random.Random(seed), sorted(TRUE), []
    for _ in range(n):
        a, b = rng.sample(names, 2)
        out.append((a, b, float(rng.random() < expected_score(TRUE[a], TRUE[b]))))
    return out


def kendall(r: dict) -> float:
    names, s = sorted(TRUE), 0
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    for a, b in pairs:
        s += math.copysign(1, (r[a] - r[b]) * (TRUE[a] - TRUE[b])) if r[a] != r[b] else 0
    return s / len(pairs)


def rmse(r: dict) -> float:
    mr, mt = statistics.mean(r.values()), statistics.mean(TRUE.values())
    return math.sqrt(statistics.mean(((r[m] - mr) - (TRUE[m] - mt)) ** 2 for m in TRUE))


def main(quick: bool) -> None:
    sizes, seeds = ([100, 1000] if quick else [50, 200, 1000, 5000]), (5 if quick else 20)
    fits = {"elo_k32_one_order": lambda g: elo_ratings(g, k=32),
            "elo_k4_20_orders": lambda g: elo_ratings(g, k=4, shuffles=20),
            "bradley_terry_mle": lambda g: bradley_terry_ratings(g, prior=0.5)}
    table = {}
    print("| games | method | Kendall tau (mean over seeds) | exact order | RMSE (points) |\n|---|---|---|---|---|")
    for n in sizes:
        for name, fit in fits.items():
            rs = [fit(games(n, s)) for s in range(seeds)]
            taus = [kendall(r) for r in rs]
            row = {"tau": statistics.mean(taus), "exact": sum(t == 1 for t in taus) / seeds,
                   "rmse": statistics.mean(rmse(r) for r in rs)}
            table[f"{name}@{n}"] = row
            print(f"| {n} | {name} | {row['tau']:.3f} | {row['exact']:.2f} | {row['rmse']:.1f} |")
    big = sizes[-1]
    ours, peer = table[f"elo_k4_20_orders@{big}"], table[f"bradley_terry_mle@{big}"]
    print(json.dumps({"benchmark": "align_elo", "ours": ours, "peer": peer,
                      "ratio": {"tau": ours["tau"] / peer["tau"], "inv_rmse": peer["rmse"] / ours["rmse"]}}))


if __name__ == "__main__":
    main("--quick" in sys.argv)
