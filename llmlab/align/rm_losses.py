"""Reward-model losses: Bradley-Terry on pairs and Plackett-Luce on rankings.

Bradley & Terry (1952); as used for RLHF reward models by Ouyang et al. 2022 (InstructGPT):
    P(y_w > y_l | x) = sigma(r(x, y_w) - r(x, y_l)),  L_BT = -log sigma(r_w - r_l).
Plackett (1975), Luce (1959): the probability of a full ranking tau of K responses is
    P(tau) = prod_{k=1..K} exp(r_tau(k)) / sum_{j=k..K} exp(r_tau(j)),
so L_PL = -sum_k [r_tau(k) - logsumexp_{j>=k} r_tau(j)]. For K = 2 it equals L_BT.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigma(r_chosen - r_rejected); logsigmoid keeps large gaps finite."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def plackett_luce_loss(rewards: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """rewards (B, K): scores of K responses listed best first. mask (B, K) bool marks real entries
    (lists shorter than K are padded at the end). Returns the mean over the batch of the ranking NLL.

    The last position of a ranking contributes r - logsumexp(r) = 0, so it is skipped implicitly.
    """
    if mask is None:
        mask = torch.ones_like(rewards, dtype=torch.bool)
    r = rewards.masked_fill(~mask, float("-inf"))
    # suffix logsumexp: flip, cumulative logsumexp, flip back -> logsumexp_{j >= k} r_j
    suffix = torch.logcumsumexp(r.flip(-1), dim=-1).flip(-1)
    terms = torch.where(mask, rewards - suffix, torch.zeros_like(rewards))
    return -terms.sum(-1).mean()


def ranking_to_pairs(k: int) -> list[tuple[int, int]]:
    """All K(K-1)/2 (better, worse) index pairs of a best-first ranking (InstructGPT's expansion)."""
    return [(i, j) for i in range(k) for j in range(i + 1, k)]
