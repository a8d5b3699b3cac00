"""Policy-gradient pieces shared by PPO and GRPO.

PPO clipped surrogate (Schulman et al. 2017, eq. 7), written as a loss to minimise:
    rho = exp(logp - logp_old);  L = max(-A * rho, -A * clip(rho, 1 - eps, 1 + eps)).
The max of the negated terms is the min of the objective terms: the gradient vanishes only once
rho has left [1 - eps, 1 + eps] in the direction the advantage favours (digest-000 error 8).
Clipped value loss (as in TRL's PPO / OpenAI baselines):
    L_V = 0.5 * max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2).
Entropy from logits: H = logsumexp(z) - sum softmax(z) * z (digest-003 error 10: the "old code"
that applies p log p to raw logits is wrong).
k3 KL estimator (Schulman 2020, "Approximating KL divergence"), used by GRPO (Shao et al. 2024):
    r = pi_ref / pi_theta,  k3 = r - log r - 1 >= 0, unbiased for KL(pi_theta || pi_ref) under pi_theta.
"""
from __future__ import annotations

import torch

from llmlab.align.masked import masked_mean


def ppo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                  mask: torch.Tensor, clip_eps: float = 0.2) -> tuple[torch.Tensor, dict]:
    """Token-level clipped surrogate, masked mean over all tokens. Old log-probs are detached."""
    ratio = torch.exp(logprobs - old_logprobs.detach())
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask).detach(),
             "approx_kl": masked_mean(old_logprobs.detach() - logprobs, mask).detach()}
    return loss, stats


def ppo_clip_per_token(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                       clip_eps: float = 0.2) -> torch.Tensor:
    """Unreduced max(-A rho, -A clip(rho)): GRPO averages it per sequence first."""
    ratio = torch.exp(logprobs - old_logprobs.detach())
    return torch.maximum(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps))


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range_value: float = 0.2) -> tuple[torch.Tensor, dict]:
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    l1 = (values - returns) ** 2
    l2 = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(l1, l2), mask)
    return loss, {"vf_clipfrac": masked_mean((l2 > l1).float(), mask).detach()}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of softmax(logits) over the last dim."""
    logits = logits.float()
    p = torch.softmax(logits, -1)
    return torch.logsumexp(logits, -1) - (p * logits).sum(-1)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 = r - log r - 1 with log r = ref - logp (the sampled token's log-probs)."""
    log_r = ref_logprobs - logprobs
    return torch.exp(log_r) - log_r - 1
