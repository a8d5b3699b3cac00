"""Elo ratings from pairwise judgements (Elo 1978; used for preference rankings by Sparrow and the
HH-RLHF paper, and by Chatbot Arena for model leaderboards).

Each judgement is (a, b, s) with s = 1 if a won, 0.5 for a tie, 0 if b won. Elo's expected score is
    E_a = 1 / (1 + 10^((R_b - R_a) / 400)),
and after each game both ratings move by K times the surprise:
    R_a <- R_a + K (s - E_a),   R_b <- R_b + K ((1 - s) - (1 - E_a)).
Sequential Elo depends on the order of the games, so `elo_ratings(..., shuffles=n)` averages the
final ratings over n random orders (Chatbot Arena's fix). `bradley_terry_ratings` is the
order-free maximum-likelihood fit of the same model, P(a beats b) = sigma((R_a - R_b) ln10/400),
by Zermelo's / Hunter's MM iteration (ties count half a win each), on the same 400-point scale.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from llmlab.errors import UserError

Game = tuple[str, str, float]


def expected_score(r_a: float, r_b: float, scale: float = 400.0) -> float:
    """Elo's expected score of a against b."""
    return 1.0 / (1.0 + 10.0 ** ((r_b - r_a) / scale))


def elo_update(r_a: float, r_b: float, score_a: float, k: float = 32.0, scale: float = 400.0) -> tuple[float, float]:
    """Both new ratings after one game; the sum of the two ratings is conserved."""
    delta = k * (score_a - expected_score(r_a, r_b, scale))
    return r_a + delta, r_b - delta


def tournament_update(rating: float, opponents: list[float], scores: list[float], k: float = 32.0) -> float:
    """One player's rating after a tournament, all games scored against the ratings at its start
    (FIDE's periodic update: R + K (sum s - sum E))."""
    return rating + k * (sum(scores) - sum(expected_score(rating, o) for o in opponents))


def _check(games: list[Game]) -> list[Game]:
    for i, g in enumerate(games):
        if len(g) != 3 or g[0] == g[1] or g[2] not in (0, 0.5, 1):
            raise UserError(f"judgement {i}: expected (a, b, score) with a != b and score 1, 0.5 or 0, got {g!r}")
    return games


def elo_ratings(games: list[Game], k: float = 4.0, init: float = 1000.0, shuffles: int = 0,
                seed: int = 0) -> dict[str, float]:
    """Sequential Elo over `games` in order (shuffles=0), or the mean over `shuffles` random orders."""
    games = _check(list(games))
    players = sorted({p for a, b, _ in games for p in (a, b)})
    orders = [games] if shuffles <= 0 else []
    rng = random.Random(seed)
    for _ in range(shuffles):
        order = games[:]
        rng.shuffle(order)
        orders.append(order)
    total = dict.fromkeys(players, 0.0)
    for order in orders:
        r = dict.fromkeys(players, init)
        for a, b, s in order:
            r[a], r[b] = elo_update(r[a], r[b], s, k)
        for p in players:
            total[p] += r[p]
    return {p: total[p] / len(orders) for p in players}


def bradley_terry_ratings(games: list[Game], init: float = 1000.0, iters: int = 1000, tol: float = 1e-10,
                          prior: float = 0.0) -> dict[str, float]:
    """Maximum-likelihood Bradley-Terry strengths (Hunter 2004's MM update
    p_i <- W_i / sum_j n_ij / (p_i + p_j)) as Elo-scale ratings 400 log10 p_i, centred on `init`.
    `prior` adds that many virtual ties of each player against every other (keeps a player with no
    wins finite)."""
    games = _check(list(games))
    players = sorted({p for a, b, _ in games for p in (a, b)})
    idx = {p: i for i, p in enumerate(players)}
    n = len(players)
    wins = [0.0] * n
    pair = [[0.0] * n for _ in range(n)]
    for a, b, s in games:
        i, j = idx[a], idx[b]
        wins[i] += s
        wins[j] += 1 - s
        pair[i][j] += 1
        pair[j][i] += 1
    for i in range(n):
        for j in range(n):
            if i != j and prior:
                pair[i][j] += prior
                wins[i] += prior / 2
    if any(w <= 0 for w in wins):
        raise UserError("bradley_terry_ratings: a player never won or tied (no finite MLE); pass prior > 0")
    p = [1.0] * n
    for _ in range(iters):
        new = [wins[i] / sum(pair[i][j] / (p[i] + p[j]) for j in range(n) if pair[i][j]) for i in range(n)]
        g = math.exp(sum(math.log(x) for x in new) / n)  # fix the scale: geometric mean 1
        new = [x / g for x in new]
        done = max(abs(a - b) for a, b in zip(new, p)) < tol
        p = new
        if done:
            break
    return {pl: init + 400.0 * math.log10(p[idx[pl]]) for pl in players}


def judge_pairwise(answers: dict[str, list], judge) -> list[Game]:
    """Round-robin judgements: for every item and every pair of systems, judge(item, x, y) -> 1, 0.5
    or 0 (e.g. a verifiable checker: right beats wrong, equal verdicts tie)."""
    names = sorted(answers)
    lengths = {len(v) for v in answers.values()}
    if len(lengths) != 1:
        raise UserError(f"judge_pairwise: systems answered different numbers of items {sorted(lengths)}")
    games = []
    for i in range(lengths.pop()):
        for x in range(len(names)):
            for y in range(x + 1, len(names)):
                a, b = names[x], names[y]
                games.append((a, b, float(judge(i, answers[a][i], answers[b][i]))))
    return games


def read_judgements(path: str | Path) -> list[Game]:
    """JSONL rows {"model_a", "model_b", "winner": "model_a" | "model_b" | "tie"} (Chatbot Arena's
    columns; "a"/"b" also accepted)."""
    from llmlab.data.packages import read_jsonl

    score = {"model_a": 1.0, "a": 1.0, "model_b": 0.0, "b": 0.0, "tie": 0.5, "tie (bothbad)": 0.5}
    games = []
    for i, r in enumerate(read_jsonl(str(path))):
        if not isinstance(r, dict) or "model_a" not in r or "model_b" not in r or r.get("winner") not in score:
            raise UserError(f"{path}:{i + 1}: needs model_a, model_b and winner in {sorted(score)}")
        games.append((str(r["model_a"]), str(r["model_b"]), score[r["winner"]]))
    if not games:
        raise UserError(f"{path}: no judgements")
    return _check(games)


@dataclass
class EloRun:
    judgements: str = field(default="", metadata={"help": "JSONL of {model_a, model_b, winner: model_a|model_b|tie}"})
    k: float = field(default=4.0, metadata={"help": "Elo K factor"})
    shuffles: int = field(default=100, metadata={"help": "average sequential Elo over this many random game orders"})
    seed: int = field(default=0, metadata={"help": "order seed"})


def run_elo(cfg: EloRun) -> int:
    """Elo and Bradley-Terry ratings from pairwise judgements (Chatbot Arena JSONL)

    Example: llmlab align elo judgements=battles.jsonl
    """
    if not cfg.judgements:
        raise UserError("judgements=<file.jsonl> is required")
    if not Path(cfg.judgements).is_file():
        raise UserError(f"config key 'judgements': no such file {cfg.judgements}")
    games = read_judgements(cfg.judgements)
    elo = elo_ratings(games, cfg.k, shuffles=cfg.shuffles, seed=cfg.seed)
    bt = bradley_terry_ratings(games, prior=0.5)
    print("| rank | model | Elo | Bradley-Terry |\n|---|---|---|---|")
    for i, m in enumerate(sorted(elo, key=elo.get, reverse=True)):
        print(f"| {i + 1} | {m} | {elo[m]:.0f} | {bt[m]:.0f} |")
    print(json.dumps({"verb": "align elo", "games": len(games), "elo": elo, "bradley_terry": bt}))
    return 0
