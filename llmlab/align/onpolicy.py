"""What the on-policy RL trainers (GRPO, PPO) share: the policy/reference checks, a frozen
reference, one AdamW over the trainable parameters behind the NaN guard, prompts drawn without
replacement in reshuffled passes, and sampling a rollout with the config's settings."""
from __future__ import annotations

import random

import torch

from llmlab.align.nan_guard import NanGuard
from llmlab.align.rollout import Rollout, sample
from llmlab.errors import UserError
from llmlab.log import get_logger


class OnPolicyTrainer:
    name = "RL"  # in error messages

    def __init__(self, policy, ref, tokenizer, prompts: list[dict], cfg, trainable: torch.nn.Module, metrics=None):
        """cfg needs learning_rate, max_grad_norm, seed, max_completion_length, temperature, top_p,
        max_steps; `trainable`: the module(s) the optimizer updates (the policy, or policy + critic)."""
        if policy.config.vocab_size != ref.config.vocab_size:
            raise UserError(f"policy and reference vocabularies differ ({policy.config.vocab_size} vs "
                            f"{ref.config.vocab_size}): they must share one tokenizer")
        if not prompts:
            raise UserError(f"{self.name}: no prompts")
        self.policy, self.ref, self.tok, self.cfg = policy, ref.eval(), tokenizer, cfg
        for p in self.ref.parameters():
            p.requires_grad_(False)
        self.prompts, self.metrics = prompts, metrics
        self.opt = torch.optim.AdamW([p for p in trainable.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                     weight_decay=0.0, foreach=True)
        self.guard = NanGuard(trainable, self.opt, cfg.max_grad_norm)
        self.rng = random.Random(cfg.seed)
        self.gen = torch.Generator(device=next(policy.parameters()).device).manual_seed(cfg.seed)
        self.pad_id = tokenizer.pad_id if getattr(tokenizer, "pad_id", None) is not None else 0
        self.order: list[int] = []
        self.log, self.step_count = get_logger(), 0

    def _next_rows(self, n: int) -> list[dict]:
        """n prompts, each pass over the prompts in a new random order."""
        rows = []
        for _ in range(n):
            if not self.order:
                self.order = list(range(len(self.prompts)))
                self.rng.shuffle(self.order)
            rows.append(self.prompts[self.order.pop()])
        return rows

    def _rollout(self, prompt_ids: list[list[int]]) -> Rollout:
        cfg = self.cfg
        return sample(self.policy, prompt_ids, cfg.max_completion_length, self.tok.eos_id, self.pad_id,
                      cfg.temperature, cfg.top_p, self.gen)

    def step(self) -> dict:
        raise NotImplementedError

    def train(self) -> list[dict]:
        return [self.step() for _ in range(self.cfg.max_steps)]


def completion_texts(tokenizer, ro: Rollout) -> list[str]:
    """The decoded completions of a rollout, end-of-sequence tokens left out."""
    eos = tokenizer.eos_id
    return [tokenizer.decode([t for t in c if t != eos]) for c in ro.completions()]
