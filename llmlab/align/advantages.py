"""Advantages and per-token rewards for PPO (GAE) and GRPO (group-relative).

Per-token RLHF reward (Ziegler et al. 2019; Ouyang et al. 2022; TRL's PPO):
    r_t = -beta * (logp_t - ref_logp_t), plus the reward-model score at the last real token.
GAE (Schulman et al. 2016, eq. 16): delta_t = r_t + gamma V_{t+1} - V_t (V = 0 after the last
token), A_t = sum_l (gamma lambda)^l delta_{t+l}, computed backwards A_t = delta_t + gamma lambda A_{t+1};
returns R_t = A_t + V_t are the value targets.
GRPO (Shao et al. 2024, DeepSeekMath section 4.1.2-4.1.3):
  outcome supervision: A_{i,t} = (r_i - mean(r_group)) / std(r_group) for every token of o_i;
  process supervision: step rewards sit at the *end token of each reasoning step*; all step rewards
  of the group are normalised together, and A_{i,t} = sum of o_i's normalised step rewards whose
  step ends at or after t. (The notes say "a reward at every token", digest-000 error 9.)
GRPO is an online RL method with no critic; it is not derived from DPO (digest-001 error 5).
"""
from __future__ import annotations

import torch


def kl_penalized_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """scores (B,), log-probs and mask (B, T) -> (token rewards, per-token KL). The score lands on the
    last real token of each row; sum_t rewards = score - beta * sum_t kl."""
    m = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * m
    rewards = -beta * kl
    last = _last_index(mask)
    rewards[torch.arange(len(scores)), last] += scores.to(rewards.dtype)
    return rewards * m, kl


def _last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True per row (rows must have one)."""
    T = mask.shape[1]
    idx = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), idx, torch.full_like(idx, -1)).max(1).values


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) token rewards, values, mask (right padding) -> (advantages, returns), zero on padding."""
    m = mask.to(values.dtype)
    rewards, values = rewards * m, values * m  # padding: no reward, V = 0, so the episode ends there
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_v = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    adv = adv * m
    return adv, (adv + values) * m


def grpo_outcome_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """rewards (N,) with consecutive groups of `group_size` -> normalised (N,). A group whose rewards are
    all equal gets zeros (std = 0; eps keeps it finite). std is unbiased, as in TRL's GRPO."""
    g = rewards.view(-1, group_size)
    mean = g.mean(1, keepdim=True)
    std = g.std(1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    return ((g - mean) / (std + eps)).view(-1)


def grpo_process_advantages(step_rewards: torch.Tensor, step_mask: torch.Tensor, group_size: int,
                            eps: float = 1e-4) -> torch.Tensor:
    """step_rewards (N, T): reward of a reasoning step written at the step's last token; step_mask (N, T)
    marks those positions. Normalise over all steps of the group, then take the suffix sum per row:
    A_t = sum_{j: end(j) >= t} r~_j. Returns (N, T)."""
    N, T = step_rewards.shape
    r = step_rewards.view(-1, group_size * T)
    m = step_mask.view(-1, group_size * T).to(r.dtype)
    n = m.sum(1, keepdim=True)
    mean = (r * m).sum(1, keepdim=True) / n.clamp(min=1)
    var = (((r - mean) * m) ** 2).sum(1, keepdim=True) / (n - 1).clamp(min=1)
    norm = ((r - mean) / (var.sqrt() + eps) * m).view(N, T)
    return norm.flip(-1).cumsum(-1).flip(-1)
