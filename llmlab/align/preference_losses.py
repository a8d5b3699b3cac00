"""Offline preference losses on sequence log-probabilities (no sampling, no reward model).

Inputs are log pi(y|x) summed over completion tokens (or averaged, where stated) for the policy
and, except ORPO, a frozen reference. Each function returns per-example losses; the trainer means.

DPO  (Rafailov et al. 2023, eq. 7): L = -log sigma(beta * [(lp_w - ref_w) - (lp_l - ref_l)]).
IPO  (Azar et al. 2023, eq. 17):   L = (h - 1/(2 tau))^2 with h the same log-ratio margin; the
     squared loss pulls the margin to a finite target instead of pushing it to infinity. TRL passes
     per-token averaged log-probs (length-normalised h, confirmed with the IPO authors); our trainer
     does the same.
KTO  (Ethayarajh et al. 2024, eq. 7-8): unpaired data. With r = lp - ref and the reference point
     z0 = max(0, KL(pi || pi_ref)) estimated on mismatched (x, y') pairs and *detached*,
       desirable:   L = lambda_D * (1 - sigma(beta * (r - z0)))
       undesirable: L = lambda_U * (1 - sigma(beta * (z0 - r)))
     (i.e. lambda_y - v(x, y) from the paper's value function).
ORPO (Hong et al. 2024, eq. 6-7): no reference model. With P = exp(mean token log-prob),
     odds(y) = P / (1 - P), L = NLL(y_w) - lambda * log sigma(log odds(y_w) - log odds(y_l)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, dict]:
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    loss = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    return loss, _rewards(beta, chosen_ratio, rejected_ratio)


def ipo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, dict]:
    """beta is IPO's tau. Pass length-averaged log-probs to follow TRL/the authors' practice."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    loss = (chosen_ratio - rejected_ratio - 1.0 / (2.0 * beta)) ** 2
    return loss, _rewards(beta, chosen_ratio, rejected_ratio)


def kto_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor,
             kl_ref_point: torch.Tensor | float, beta: float = 0.1, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """desirable: (B,) bool labels. kl_ref_point: the batch KL estimate z0 (detached, clamped >= 0)."""
    z0 = torch.as_tensor(kl_ref_point, dtype=policy_logps.dtype, device=policy_logps.device).detach().clamp(min=0)
    ratio = policy_logps - ref_logps
    good = desirable_weight * (1 - torch.sigmoid(beta * (ratio - z0)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - ratio)))
    loss = torch.where(desirable.bool(), good, bad)
    return loss, {"rewards": (beta * ratio).detach(), "kl_ref_point": z0}


def kto_reference_point(policy_mismatched: torch.Tensor, ref_mismatched: torch.Tensor) -> torch.Tensor:
    """z0 = max(0, mean(lp(y'|x) - ref(y'|x))) over mismatched pairs (x_i, y_{i-1}); no gradient."""
    return (policy_mismatched - ref_mismatched).mean().detach().clamp(min=0)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both ends (Maechler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(chosen_mean_logp: torch.Tensor, rejected_mean_logp: torch.Tensor, chosen_nll: torch.Tensor,
              lam: float = 0.1) -> tuple[torch.Tensor, dict]:
    """chosen/rejected_mean_logp: per-token *average* log-probs (< 0). chosen_nll: the SFT loss on y_w
    (mean token NLL). Returns per-example L_SFT - lambda * log sigma(log odds ratio)."""
    log_odds = (chosen_mean_logp - rejected_mean_logp) - (log1mexp(chosen_mean_logp) - log1mexp(rejected_mean_logp))
    ratio_term = F.logsigmoid(log_odds)
    loss = chosen_nll - lam * ratio_term
    return loss, {"log_odds_ratio": log_odds.detach(), "or_term": ratio_term.detach(),
                  "chosen_rewards": (lam * chosen_mean_logp).detach(),
                  "rejected_rewards": (lam * rejected_mean_logp).detach()}


def _rewards(beta: float, chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor) -> dict:
    """Implicit rewards beta * log(pi/pi_ref) (DPO section 5), logged by every trainer."""
    c, r = (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()
    return {"chosen_rewards": c, "rejected_rewards": r, "margin": c - r, "accuracy": (c > r).float()}
