"""Rejection-sampling fine-tuning: RAFT (Dong et al. 2023, "RAFT: Reward rAnked FineTuning for
generative foundation model alignment"), the best-of-N distillation LLaMA-2-Chat used before PPO.

Each round, for a batch of prompts:
  1. sample k = num_generations completions per prompt from the current policy (the one rollout
     sampler, `llmlab.align.rollout.sample`);
  2. score them with a reward (a verifiable checker, `rule_rewards`, or a reward model's scorer);
  3. keep the best completion of each prompt if its reward reaches `min_reward` (RAFT keeps the
     top 1/k by reward; with a checker, keep only right answers);
  4. fine-tune on the kept (prompt, completion) pairs with the SFT loss
     -1/|y| sum_t log pi(y_t | x, y_<t), on the sampled token ids themselves (no re-tokenisation).
No reference model and no advantage: RAFT is SFT on the policy's own filtered samples.
`sft_on_pairs` is also the fine-tune step of the red-team loop (redteam.py).
"""
from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from llmlab.align.encode import pad_id_of
from llmlab.align.logprobs import sequence_logprobs
from llmlab.align.nan_guard import NanGuard
from llmlab.align.rollout import sample
from llmlab.log import get_logger


@dataclass
class RAFTConfig:
    num_generations: int = field(default=8, metadata={"help": "k: completions sampled per prompt"})
    prompts_per_round: int = field(default=64, metadata={"help": "prompts sampled in each round"})
    rounds: int = field(default=2, metadata={"help": "sample -> filter -> fine-tune rounds"})
    max_completion_length: int = field(default=8, metadata={"help": "new tokens per sample"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    min_reward: float = field(default=1.0, metadata={"help": "keep a prompt's best sample only if its reward >= this"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    num_train_epochs: int = field(default=1, metadata={"help": "SFT passes over each round's kept samples"})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "kept samples per SFT step"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    seed: int = field(default=0, metadata={"help": "sampling and order seed"})

    def __post_init__(self):
        if self.num_generations < 1 or self.rounds < 1 or self.prompts_per_round < 1 or self.temperature <= 0:
            raise ValueError("num_generations, rounds and prompts_per_round must be >= 1, temperature > 0")


def sft_on_pairs(policy, items: list[tuple[list[int], list[int]]], lr: float, epochs: int, batch_size: int,
                 pad: int, seed: int = 0, max_grad_norm: float = 1.0, opt=None) -> list[float]:
    """Mean-token NLL steps on (prompt ids, completion ids) pairs; returns the step losses."""
    if opt is None:
        opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr, foreach=True)
    guard, rng, losses = NanGuard(policy, opt, max_grad_norm), random.Random(seed), []
    policy.train()
    for _ in range(epochs):
        order = list(range(len(items)))
        rng.shuffle(order)
        for s in range(0, len(order), batch_size):
            b = [items[i] for i in order[s:s + batch_size]]
            lp, _ = sequence_logprobs(policy, [p for p, _ in b], [c for _, c in b], pad, average=True)
            loss = -lp.mean()
            guard.step(loss)
            losses.append(loss.item())
    policy.eval()
    return losses


class RAFTTrainer:
    """rows: {"prompt" (rendered text), ...} passed to reward_fn(row, completion_text) with the text."""

    def __init__(self, policy, tok, rows: list[dict], reward_fn: Callable[[dict, str], float], cfg: RAFTConfig,
                 metrics=None):
        self.policy, self.tok, self.rows, self.reward_fn, self.cfg, self.metrics = policy, tok, rows, reward_fn, cfg, metrics
        self.pad, self.log = pad_id_of(tok), get_logger()
        self.opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                     foreach=True)
        self.gen = torch.Generator(device=next(policy.parameters()).device).manual_seed(cfg.seed)
        self.rng = random.Random(cfg.seed)
        self.chunk = max(1, 128 // cfg.num_generations)  # prompts per sampling batch

    @torch.no_grad()
    def collect(self, rows: list[dict]) -> tuple[list[tuple[list[int], list[int]]], dict]:
        """Best-of-k per prompt, kept if its reward >= min_reward -> (SFT pairs, stats)."""
        cfg, tok, k = self.cfg, self.tok, self.cfg.num_generations
        self.policy.eval()
        prompts = [tok.encode(r["prompt"]) for r in rows]
        comps = []
        for s in range(0, len(prompts), self.chunk):  # bounded memory: chunk prompts x k rows at a time
            ro = sample(self.policy, [p for p in prompts[s:s + self.chunk] for _ in range(k)], cfg.max_completion_length,
                        tok.eos_id, self.pad, cfg.temperature, 1.0, self.gen)
            comps += ro.completions()
        rewards = [float(self.reward_fn(rows[i // k], tok.decode([t for t in c if t != tok.eos_id]).strip()))
                   for i, c in enumerate(comps)]
        kept, best_r = [], []
        for i in range(len(rows)):
            group = rewards[i * k:(i + 1) * k]
            j = max(range(k), key=lambda t: group[t])  # ties: the first sample
            best_r.append(group[j])
            if group[j] >= cfg.min_reward and comps[i * k + j]:
                kept.append((prompts[i], list(comps[i * k + j])))
        return kept, {"mean_reward": statistics.mean(rewards), "best_of_k_reward": statistics.mean(best_r),
                      "kept": len(kept), "prompts": len(rows)}

    def train(self) -> list[dict]:
        cfg, logs = self.cfg, []
        for rnd in range(cfg.rounds):
            t0 = time.perf_counter()
            rows = self.rng.sample(self.rows, min(cfg.prompts_per_round, len(self.rows)))
            kept, st = self.collect(rows)
            t1 = time.perf_counter()
            losses = sft_on_pairs(self.policy, kept, cfg.learning_rate, cfg.num_train_epochs,
                                  cfg.per_device_train_batch_size, self.pad, cfg.seed + rnd, cfg.max_grad_norm,
                                  self.opt) if kept else []
            rec = {"round": rnd, **st, "sft_steps": len(losses), "sft_loss": statistics.mean(losses) if losses else None,
                   "time_sample": t1 - t0, "time_sft": time.perf_counter() - t1}
            logs.append(rec)
            self.log.info("raft round %d: reward %.3f, best-of-%d %.3f, kept %d/%d, %d SFT steps", rnd,
                          st["mean_reward"], cfg.num_generations, st["best_of_k_reward"], st["kept"], st["prompts"],
                          len(losses))
            if self.metrics is not None:
                self.metrics.write(**rec)
        return logs
