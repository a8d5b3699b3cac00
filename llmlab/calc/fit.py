"""A scaling-law study on our own tiny runs (Hoffmann et al. 2022, Chinchilla, Approach 3).

Train byte-level models of several sizes N for several token budgets D (each run its own cosine
schedule, as the paper does), measure held-out loss, and fit

    L(N, D) = E + A / N^alpha + B / D^beta

by minimising the Huber loss (delta 1e-3) of log L_pred - log L over a grid of starting points,
as in the paper. The compute-optimal split follows in closed form (C = 6ND):
N_opt ~ C^a, D_opt ~ C^b with a = beta/(alpha+beta), b = alpha/(alpha+beta) (llmlab.calc.chinchilla).
Tiny CPU runs sit far below the paper's 70M-16B range: the exponents are what this data says, not
a replication.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F


def train_point(tokens: torch.Tensor, val: torch.Tensor, hidden: int, layers: int, steps: int, seq: int,
                batch: int, lr: float, seed: int) -> dict:
    """Train one byte-level model for `steps` steps; return N (params), D (tokens) and val loss."""
    from llmlab.model import ModelConfig, Transformer
    from llmlab.train.optim import build_optimizer
    from llmlab.train.schedule import lr_factor
    torch.manual_seed(seed)
    heads = max(1, hidden // 16)
    model = Transformer(ModelConfig(vocab_size=256, hidden_size=hidden, num_hidden_layers=layers,
                                    num_attention_heads=heads, max_position_embeddings=seq))
    opt = build_optimizer(model, lr, 0.1, (0.9, 0.95), 1e-8)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        for grp in opt.param_groups:
            grp["lr"] = lr * lr_factor(step, "cosine", steps, max(1, steps // 20), 0.1)
        idx = torch.randint(0, len(tokens) - seq - 1, (batch,), generator=g)
        w = torch.stack([tokens[i:i + seq + 1] for i in idx.tolist()]).long()
        loss = F.cross_entropy(model(w[:, :-1]).flatten(0, 1), w[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    starts = list(range(0, len(val) - seq - 1, seq))[:64]
    with torch.no_grad():
        w = torch.stack([val[i:i + seq + 1] for i in starts]).long()
        vloss = float(F.cross_entropy(model(w[:, :-1]).flatten(0, 1), w[:, 1:].flatten()))
    return {"hidden": hidden, "params": sum(p.numel() for p in model.parameters()), "tokens": steps * batch * seq,
            "val_loss": vloss}


GRID = list(itertools.product((0, 5, 10), (0, 5, 10), (-1, 0.5), (0.0, 0.5, 1.0), (0.0, 0.5, 1.0)))


def fit_loss_surface(points: list[dict], starts=None) -> dict:
    """Fit E, A, B, alpha, beta to points with params, tokens, val_loss (Huber on log residuals);
    starts: (log A, log B, log E, alpha, beta) starting points, default the grid above (~30 s)."""
    import numpy as np
    from scipy.optimize import minimize
    from scipy.special import logsumexp
    logn = np.log([p["params"] for p in points])
    logd = np.log([p["tokens"] for p in points])
    logl = np.log([p["val_loss"] for p in points])
    delta = 1e-3

    def objective(x):
        a, b, e, al, be = x
        pred = logsumexp(np.stack([a - al * logn, b - be * logd, np.full_like(logn, e)]), axis=0)
        r = np.abs(pred - logl)
        return float(np.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta)).sum())

    best = None
    for x0 in starts or GRID:
        r = minimize(objective, x0, method="L-BFGS-B",
                     bounds=[(-10, 30), (-10, 30), (-5, 3), (0.0, 3.0), (0.0, 3.0)])
        if best is None or r.fun < best.fun:
            best = r
    a, b, e, al, be = best.x
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": al, "beta": be,
            "a": be / (al + be) if al + be > 0 else float("nan"), "b": al / (al + be) if al + be > 0 else float("nan"),
            "huber": best.fun}


def predict(fit: dict, n: float, d: float) -> float:
    return fit["E"] + fit["A"] / n ** fit["alpha"] + fit["B"] / d ** fit["beta"]


def optimal_split(fit: dict, compute: float) -> tuple[float, float]:
    """Closed-form N_opt, D_opt for the fitted surface under C = 6ND."""
    al, be = fit["alpha"], fit["beta"]
    G = (al * fit["A"] / (be * fit["B"])) ** (1.0 / (al + be))
    return G * (compute / 6) ** (be / (al + be)), (compute / 6) ** (al / (al + be)) / G
