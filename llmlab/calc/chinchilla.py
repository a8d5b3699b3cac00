"""Chinchilla compute-optimal planner (Hoffmann et al. 2022, Approach 3; the closed form is in
llmlab.train.sizing, reused here). With L = E + A/N^alpha + B/D^beta and C = 6ND:
N_opt ~ C^a, D_opt ~ C^b with a = beta/(alpha+beta) ~ 0.45 and b = alpha/(alpha+beta) ~ 0.55.
The source notes (003, after the RUC survey) write a = alpha/(alpha+beta), b = beta/(alpha+beta):
the exponents swapped; `exponents()` returns the derived (correct) pair.
"""
from __future__ import annotations

from llmlab.train.sizing import CHINCHILLA, chinchilla_loss, chinchilla_optimal


def exponents(alpha: float = CHINCHILLA["alpha"], beta: float = CHINCHILLA["beta"]) -> tuple[float, float]:
    """(a, b): N_opt ~ C^a, D_opt ~ C^b."""
    return beta / (alpha + beta), alpha / (alpha + beta)


def plan(compute: float) -> dict:
    n, d = chinchilla_optimal(compute)
    return {"params": n, "tokens": d, "tokens_per_param": d / n, "loss": chinchilla_loss(n, d)}
