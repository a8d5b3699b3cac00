"""PPO for RLHF (Schulman et al. 2017; Ziegler et al. 2019; Ouyang et al. 2022 "PPO-ptx"), following
the make-experience / optimise split of TRL's former PPOTrainer that digest-003 walks through.

Four separate roles: the policy (actor), a critic (value model: backbone + scalar head per token),
a frozen reference, and a reward function (a reward model's scorer or a verifiable reward).
One step:
  1. rollout: sample completions for a batch of prompts                         (time_rollout)
  2. reward: score each completion                                              (time_reward)
  3. experience (no grad, once per rollout): old log-probs, reference log-probs, old values;
     token rewards r_t = -beta (logp - ref_logp) + score at the last token; GAE -> advantages,
     returns; advantages whitened over the batch
  4. ppo_epochs passes over shuffled mini-batches: clipped surrogate + vf_coef * clipped value loss
     - ent_coef * entropy (+ ptx_coef * LM loss on pretraining text); if the policy's KL to the
     rollout policy exceeds 1.5 * target_kl the update is dropped and the epoch loop stops   (time_update)
The reference KL lives in the reward; the old-policy trust region is the clip (digest-000 error 7).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from llmlab.align.advantages import gae, kl_penalized_rewards
from llmlab.align.logprobs import pad_right, token_logprobs
from llmlab.align.masked import masked_mean, masked_whiten
from llmlab.align.onpolicy import OnPolicyTrainer, completion_texts
from llmlab.align.policy_losses import entropy_from_logits, ppo_clip_loss, value_loss
from llmlab.errors import UserError


@dataclass
class PPOConfig:
    rollout_batch_size: int = field(default=8, metadata={"help": "prompts sampled per PPO step"})
    mini_batch_size: int = field(default=4, metadata={"help": "rows per gradient update"})
    ppo_epochs: int = field(default=4, metadata={"help": "passes over each rollout batch"})
    max_steps: int = field(default=20, metadata={"help": "rollout/update cycles"})
    max_completion_length: int = field(default=16, metadata={"help": "new tokens per sample"})
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW lr for policy and critic"})
    kl_coef: float = field(default=0.05, metadata={"help": "beta of the per-token KL penalty in the reward"})
    cliprange: float = field(default=0.2, metadata={"help": "policy ratio clip"})
    cliprange_value: float = field(default=0.2, metadata={"help": "value clip around the old values"})
    vf_coef: float = field(default=0.1, metadata={"help": "value-loss weight"})
    ent_coef: float = field(default=0.0, metadata={"help": "entropy bonus weight"})
    gamma: float = field(default=1.0, metadata={"help": "discount"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda"})
    whiten_advantages: bool = field(default=True, metadata={"help": "normalise advantages per batch"})
    target_kl: float = field(default=0.0, metadata={"help": "early stop when policy KL > 1.5 * target_kl (0 = off)"})
    ptx_coef: float = field(default=0.0, metadata={"help": "PPO-ptx pretraining LM-loss weight (gamma)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    seed: int = field(default=0, metadata={"help": "sampling and order seed"})

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for PPO sampling, got {self.temperature}")
        if self.rollout_batch_size < 1 or self.mini_batch_size < 1 or self.ppo_epochs < 1:
            raise ValueError("rollout_batch_size, mini_batch_size and ppo_epochs must be >= 1")


# (rows, completion texts) -> scores (B,)
ScoreFn = Callable[[list[dict], list[str]], torch.Tensor]


class PPOTrainer(OnPolicyTrainer):
    name = "PPO"

    def __init__(self, policy, ref, critic, tokenizer, prompts: list[dict], score_fn: ScoreFn, cfg: PPOConfig,
                 ptx_texts: list[str] | None = None, metrics=None):
        if cfg.ptx_coef > 0 and not ptx_texts:
            raise UserError("ptx_coef > 0 needs pretraining texts (ptx_data)")
        self.both = nn.ModuleDict({"policy": policy, "critic": critic})
        super().__init__(policy, ref, tokenizer, prompts, cfg, self.both, metrics)
        self.critic, self.score_fn, self.ptx_texts = critic, score_fn, ptx_texts or []

    def _ptx_loss(self) -> torch.Tensor:
        texts = self.rng.sample(self.ptx_texts, min(self.cfg.mini_batch_size, len(self.ptx_texts)))
        ctx = self.policy.config.max_position_embeddings
        ids, mask = pad_right([self.tok.encode(t)[:ctx] or [self.pad_id] for t in texts], self.pad_id)
        dev = next(self.policy.parameters()).device
        ids, mask = ids.to(dev), mask.to(dev)
        labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], 1)
        labels = labels.masked_fill(torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], 1) == 0, -100)
        return self.policy.loss(ids, labels, attention_mask=mask)

    @torch.no_grad()
    def _experience(self, ro, scores, valid):
        cfg, P = self.cfg, ro.prompt_ids.shape[1]
        ids, attn = ro.ids, ro.attention_mask
        mask = (ro.completion_mask * valid.unsqueeze(1)).float()
        old_lp = token_logprobs(self.policy, ids, attn, cfg.temperature, start=P - 1)
        ref_lp = token_logprobs(self.ref, ids, attn, cfg.temperature, start=P - 1)
        old_v = self.critic(ids, attn)[:, P - 1:-1]  # V(s_t): the state before completion token t
        rewards, kl = kl_penalized_rewards(torch.where(valid, scores, torch.zeros_like(scores)),
                                           old_lp, ref_lp, ro.completion_mask, cfg.kl_coef)
        adv, ret = gae(rewards, old_v, mask, cfg.gamma, cfg.lam)  # invalid rows: mask 0, no advantage
        if cfg.whiten_advantages:
            adv = masked_whiten(adv, mask)
        return dict(ids=ids, attn=attn, mask=mask, old_lp=old_lp, old_v=old_v, adv=adv, ret=ret, kl=kl)

    def step(self) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        rows = self._next_rows(cfg.rollout_batch_size)
        ro = self._rollout([self.tok.encode(r["prompt"]) for r in rows])
        t1 = time.perf_counter()
        texts = completion_texts(self.tok, ro)
        scores = torch.as_tensor(self.score_fn(rows, texts), dtype=torch.float32).detach().reshape(-1)
        valid = torch.isfinite(scores)
        if not valid.all():
            self.log.warning("ppo: %d non-finite reward(s); those samples get no gradient", int((~valid).sum()))
        t2 = time.perf_counter()
        ex = self._experience(ro, scores, valid)
        P, B = ro.prompt_ids.shape[1], len(rows)
        self.policy.train()
        self.critic.train()
        agg, early_stop, updates = {}, False, 0
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(B, generator=torch.Generator().manual_seed(self.rng.randrange(2 ** 31)))
            for s in range(0, B, cfg.mini_batch_size):
                i = order[s:s + cfg.mini_batch_size]
                m = ex["mask"][i]
                lp, logits = token_logprobs(self.policy, ex["ids"][i], ex["attn"][i], cfg.temperature,
                                            return_logits=True, start=P - 1)
                policykl = masked_mean(ex["old_lp"][i] - lp.detach(), m).item()
                if cfg.target_kl and policykl > 1.5 * cfg.target_kl:
                    self.opt.zero_grad(set_to_none=True)
                    early_stop = True
                    break
                pg, pst = ppo_clip_loss(lp, ex["old_lp"][i], ex["adv"][i], m, cfg.cliprange)
                v = self.critic(ex["ids"][i], ex["attn"][i])[:, P - 1:-1]
                vf, vst = value_loss(v, ex["old_v"][i], ex["ret"][i], m, cfg.cliprange_value)
                ent = masked_mean(entropy_from_logits(logits / cfg.temperature), m)
                loss = pg + cfg.vf_coef * vf - cfg.ent_coef * ent
                ptx = self._ptx_loss() if cfg.ptx_coef > 0 else None
                if ptx is not None:
                    loss = loss + cfg.ptx_coef * ptx
                updates += int(self.guard.step(loss))
                for k, val in {"pg_loss": pg.item(), "vf_loss": vf.item(), "entropy": ent.item(),
                               "clipfrac": pst["clipfrac"].item(), "vf_clipfrac": vst["vf_clipfrac"].item(),
                               "policy_kl": policykl, **({"ptx_loss": ptx.item()} if ptx is not None else {})}.items():
                    agg.setdefault(k, []).append(val)
            if early_stop:
                break
        t3 = time.perf_counter()
        self.step_count += 1
        fin = scores[valid]
        rec = {"step": self.step_count, "reward": fin.mean().item() if len(fin) else float("nan"),
               "kl": (ex["kl"] * ex["mask"]).sum(1).mean().item(),
               **{k: sum(v) / len(v) for k, v in agg.items()}, "updates": updates, "early_stop": early_stop,
               "completion_length": ro.completion_mask.sum(1).float().mean().item(),
               "time_rollout": t1 - t0, "time_reward": t2 - t1, "time_update": t3 - t2}
        if self.metrics is not None:
            self.metrics.write(**rec)
        return rec


def verifiable_score_fn(reward_fn) -> ScoreFn:
    """Adapt a per-row verifiable reward (row, text) -> float to PPO's batched score function."""
    return lambda rows, texts: torch.tensor([float(reward_fn(r, t)) for r, t in zip(rows, texts)])


def reward_model_score_fn(scorer) -> ScoreFn:
    """Adapt a RewardScorer (reward_model.py) to PPO's score function; empty texts score as ' '."""
    def fn(rows, texts):
        with torch.no_grad():
            return scorer([r["prompt"] for r in rows], [t if t.strip() else " " for t in texts]).float().cpu()
    return fn
