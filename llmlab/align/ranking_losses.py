"""Ranking losses over n scored responses of one prompt, with a supervised term and no reference model.

Inputs are per response: `scores` p_i = the policy's length-normalised log-prob
(1/|y_i|) sum_t log pi(y_i,t | x, y_i,<t) (B, K); `rewards` r_i from a reward model or a checker
(B, K); `mask` (B, K) marks real responses (rankings shorter than K are padded); `nll_best` (B,) is
the mean token NLL of the highest-reward response.

RRHF (Yuan et al. 2023, "RRHF: Rank responses to align language models with human feedback", eq. 2-4):
    L_rank = sum_{r_i < r_j} max(0, p_i - p_j),   L = L_rank + L_ft,   L_ft = NLL(y_best).
    Pairs with equal rewards are not ranked.
PRO (Song et al. 2024, "Preference ranking optimization for human alignment", eq. 5-9): with the
responses sorted best first (r_1 > r_2 > ... > r_n),
    L_PRO = -sum_{k=1}^{n-1} log [ exp(p_k / T_k^k) / sum_{i=k}^{n} exp(p_i / T_k^i) ],
    T_k^i = 1 / (r_k - r_i) for i > k,   T_k^k = min_{i>k} T_k^i,
    L = L_PRO + beta * L_SFT(y_1).
With `temperature=False` every T is 1 and L_PRO is the Plackett-Luce NLL of the ranking
(rm_losses.plackett_luce_loss on the policy's scores).
"""
from __future__ import annotations

import torch


def rrhf_loss(scores: torch.Tensor, rewards: torch.Tensor, nll_best: torch.Tensor,
              mask: torch.Tensor | None = None, rank_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Per-example RRHF loss and its parts."""
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    pair = mask.unsqueeze(-1) & mask.unsqueeze(-2)
    worse_than = (rewards.unsqueeze(-1) < rewards.unsqueeze(-2)) & pair  # [i, j]: r_i < r_j
    hinge = (scores.unsqueeze(-1) - scores.unsqueeze(-2)).clamp(min=0)  # max(0, p_i - p_j)
    rank = (hinge * worse_than).sum((-1, -2))
    return rank_weight * rank + nll_best, {"rank_loss": rank.detach(), "sft_loss": nll_best.detach()}


def pro_loss(scores: torch.Tensor, rewards: torch.Tensor, nll_best: torch.Tensor, mask: torch.Tensor | None = None,
             beta: float = 1.0, temperature: bool = True) -> tuple[torch.Tensor, dict]:
    """Per-example PRO loss and its parts. Responses may come in any order: they are sorted by reward."""
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    neg = torch.finfo(rewards.dtype).min
    order = rewards.masked_fill(~mask, neg).argsort(-1, descending=True)
    p, r, m = scores.gather(-1, order), rewards.gather(-1, order), mask.gather(-1, order)
    K = p.shape[-1]
    total = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
    for k in range(K - 1):
        rest = m[:, k:].clone()  # candidates i >= k
        if temperature:
            gap = (r[:, k:k + 1] - r[:, k:]).clamp(min=0)  # 1 / T_k^i for i > k
            gap[:, 0] = (gap[:, 1:] * rest[:, 1:]).amax(-1)  # 1 / T_k^k = max_{i>k} (r_k - r_i)
        else:
            gap = torch.ones_like(r[:, k:])
        active = m[:, k] & m[:, k + 1:].any(-1)  # a step needs y_k and at least one worse response
        logits = (p[:, k:] * gap).masked_fill(~rest, float("-inf"))
        logits = torch.where(active.unsqueeze(-1), logits, torch.zeros_like(logits))  # no NaN from empty rows
        term = logits[:, 0] - torch.logsumexp(logits, -1)
        total = total - torch.where(active, term, torch.zeros_like(term))
    return total + beta * nll_best, {"rank_loss": total.detach(), "sft_loss": nll_best.detach()}
