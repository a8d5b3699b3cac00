"""GRPO: Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath, eq. 3 and section 4.1).

For each prompt, sample G completions from the current policy, score them with a verifiable
reward, and use the group-normalised rewards as advantages (no critic). Per token,
    loss_{i,t} = max(-A rho, -A clip(rho, 1-eps, 1+eps)) + beta * k3(pi_theta, pi_ref),
averaged over each completion's tokens and then over the group (the paper's 1/G sum 1/|o_i| sum_t).
With num_iterations = 1 the old policy is the current one (rho = 1, only its gradient matters);
with more, old log-probs are taken once per rollout and several updates follow.
The KL term is against a frozen reference, not the old policy (digest-000 error 7).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

from llmlab.align.advantages import grpo_outcome_advantages, grpo_process_advantages
from llmlab.align.logprobs import token_logprobs
from llmlab.align.masked import masked_mean
from llmlab.align.onpolicy import OnPolicyTrainer, completion_texts
from llmlab.align.policy_losses import k3_kl, ppo_clip_per_token
from llmlab.align.rollout import sample
from llmlab.errors import UserError


@dataclass
class GRPOConfig:
    num_generations: int = field(default=8, metadata={"help": "G: completions sampled per prompt"})
    prompts_per_step: int = field(default=2, metadata={"help": "distinct prompts per step"})
    max_steps: int = field(default=30, metadata={"help": "optimizer rollouts to run"})
    max_completion_length: int = field(default=16, metadata={"help": "new tokens per sample"})
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate"})
    beta: float = field(default=0.04, metadata={"help": "k3 KL weight against the reference (DeepSeekMath 0.04)"})
    epsilon: float = field(default=0.2, metadata={"help": "ratio clip range"})
    num_iterations: int = field(default=1, metadata={"help": "updates per rollout (mu)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass"})
    supervision: Literal["outcome", "process"] = field(default="outcome", metadata={"help": "advantage type"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    seed: int = field(default=0, metadata={"help": "sampling and prompt-order seed"})

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for GRPO sampling, got {self.temperature}")
        if self.prompts_per_step < 1 or self.max_steps < 0 or self.max_completion_length < 1:
            raise ValueError("prompts_per_step and max_completion_length must be >= 1, max_steps >= 0")
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be >= 2 (a group of one has no baseline), got {self.num_generations}")


RewardFn = Callable[[dict, str], float]
# process supervision: (row, list of step texts) -> one reward per step
StepRewardFn = Callable[[dict, list[str]], list[float]]


def split_steps(ids: list[int], step_end_ids: set[int]) -> list[tuple[int, int]]:
    """Reasoning steps as (start, end) token spans; a step ends at a step-end token or the last token."""
    spans, start = [], 0
    for i, t in enumerate(ids):
        if t in step_end_ids or i == len(ids) - 1:
            spans.append((start, i))
            start = i + 1
    return spans


class GRPOTrainer(OnPolicyTrainer):
    name = "GRPO"

    def __init__(self, policy, ref, tokenizer, prompts: list[dict], reward_fn: RewardFn, cfg: GRPOConfig,
                 step_reward_fn: StepRewardFn | None = None, step_end_ids: set[int] | None = None, metrics=None):
        if cfg.supervision == "process" and step_reward_fn is None:
            raise UserError("supervision=process needs a step reward function")
        super().__init__(policy, ref, tokenizer, prompts, cfg, policy, metrics)
        self.reward_fn, self.step_reward_fn = reward_fn, step_reward_fn
        self.step_end_ids = step_end_ids or set()

    def _advantages(self, rows, completions, T) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (advantages (N, T), rewards (N,), valid (N,) bool)."""
        G = self.cfg.num_generations
        texts = [self.tok.decode(c) for c in completions]
        rewards = torch.tensor([float(self.reward_fn(rows[i // G], s)) for i, s in enumerate(texts)])
        valid = torch.isfinite(rewards).view(-1, G).all(1).repeat_interleave(G)
        if not valid.all():
            self.log.warning("grpo: non-finite reward in %d group(s); those samples get no gradient",
                             int((~valid).sum()) // G)
        safe = torch.where(valid, rewards, torch.zeros_like(rewards))
        if self.cfg.supervision == "outcome":
            adv = grpo_outcome_advantages(safe, G).unsqueeze(1).expand(-1, T)
        else:
            step_r = torch.zeros(len(texts), T)
            step_m = torch.zeros(len(texts), T, dtype=torch.bool)
            for i, c in enumerate(completions):
                spans = split_steps(c, self.step_end_ids)
                rs = self.step_reward_fn(rows[i // G], [self.tok.decode(c[a:b + 1]) for a, b in spans])
                if len(rs) != len(spans) or not all(math.isfinite(r) for r in rs):
                    valid[(i // G) * G:(i // G + 1) * G] = False
                    continue
                for (a, b), r in zip(spans, rs):
                    step_r[i, b], step_m[i, b] = r, True
            step_m &= valid.unsqueeze(1)
            adv = grpo_process_advantages(step_r, step_m, G)
        return adv, rewards, valid

    def step(self) -> dict:
        cfg, G = self.cfg, self.cfg.num_generations
        t0 = time.perf_counter()
        rows = self._next_rows(cfg.prompts_per_step)
        ro = self._rollout([self.tok.encode(r["prompt"]) for r in rows for _ in range(G)])
        t1 = time.perf_counter()
        completions = ro.completions()
        eos = self.tok.eos_id
        adv, rewards, valid = self._advantages(rows, [[t for t in c if t != eos] for c in completions],
                                               ro.completion_ids.shape[1])
        t2 = time.perf_counter()
        ids, attn, P = ro.ids, ro.attention_mask, ro.prompt_ids.shape[1]
        mask = ro.completion_mask * valid.unsqueeze(1).to(ro.completion_mask.dtype)
        with torch.no_grad():
            ref_lp = token_logprobs(self.ref, ids, attn, cfg.temperature, start=P - 1)
            old_lp = token_logprobs(self.policy, ids, attn, cfg.temperature, start=P - 1) if cfg.num_iterations > 1 else None
        self.policy.train()
        stats = {}
        for _ in range(cfg.num_iterations):
            lp = token_logprobs(self.policy, ids, attn, cfg.temperature, start=P - 1)
            old = old_lp if old_lp is not None else lp.detach()
            kl = k3_kl(lp, ref_lp)
            per_tok = ppo_clip_per_token(lp, old, adv, cfg.epsilon) + cfg.beta * kl
            # mean over each completion's tokens, then over completions (DeepSeekMath eq. 3)
            rows_ok = mask.sum(1) > 0
            loss = masked_mean(per_tok, mask, dim=1)[rows_ok].mean() if rows_ok.any() else per_tok.sum() * 0
            applied = self.guard.step(loss)
            ratio = torch.exp(lp.detach() - old)
            stats = {"loss": loss.item(), "kl": masked_mean(kl.detach(), mask).item(),
                     "clipfrac": masked_mean(((ratio - 1).abs() > cfg.epsilon).float(), mask).item(),
                     "applied": applied}
        t3 = time.perf_counter()
        self.step_count += 1
        fin = rewards[torch.isfinite(rewards)]
        rec = {"step": self.step_count, "reward": fin.mean().item() if len(fin) else float("nan"),
               "reward_std": fin.std().item() if len(fin) > 1 else 0.0,
               "completion_length": ro.completion_mask.sum(1).float().mean().item(), **stats,
               "time_rollout": t1 - t0, "time_reward": t2 - t1, "time_update": t3 - t2}
        if self.metrics is not None:
            self.metrics.write(**rec)
        return rec


@torch.no_grad()
def mean_reward(model, tokenizer, prompts: list[dict], reward_fn: RewardFn, samples_per_prompt: int = 8,
                max_new_tokens: int = 16, temperature: float = 1.0, seed: int = 1234) -> float:
    """Expected reward of a policy on `prompts`, estimated with a fixed sampling seed (greedy at T=0)."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    pad = tokenizer.pad_id if getattr(tokenizer, "pad_id", None) is not None else 0
    ids = [tokenizer.encode(r["prompt"]) for r in prompts for _ in range(samples_per_prompt)]
    ro = sample(model, ids, max_new_tokens, tokenizer.eos_id, pad, temperature, 1.0, gen)
    texts = completion_texts(tokenizer, ro)
    return sum(reward_fn(prompts[i // samples_per_prompt], t) for i, t in enumerate(texts)) / len(ids)
