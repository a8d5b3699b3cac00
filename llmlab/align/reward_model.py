"""Reward model = LM backbone + scalar head, read at the last real token (Ouyang et al. 2022;
Stiennon et al. 2020). Also serves as PPO's critic, where every position's value is used.

Trained with the Bradley-Terry pairwise loss or the Plackett-Luce listwise loss (rm_losses.py);
evaluated by held-out pairwise accuracy (fraction of pairs with r(chosen) > r(rejected)).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from llmlab.align.encode import encode_completion, encode_prompt, pad_id_of, truncate
from llmlab.align.logprobs import pad_right
from llmlab.align.nan_guard import NanGuard
from llmlab.align.rm_losses import bradley_terry_loss, plackett_luce_loss
from llmlab.errors import UserError
from llmlab.log import get_logger


class RewardModel(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        d = backbone.config.hidden_size
        self.v_head = nn.Linear(d, 1)
        nn.init.normal_(self.v_head.weight, std=1 / (d + 1) ** 0.5)
        nn.init.zeros_(self.v_head.bias)

    @property
    def config(self):
        return self.backbone.config

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per-position scalar (B, T)."""
        h = self.backbone(ids, attention_mask=attention_mask, return_hidden=True)
        return self.v_head(h.float()).squeeze(-1)

    def score(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B,) value at each row's last real token (right or left padding)."""
        values = self(ids, attention_mask)
        T = ids.shape[1]
        pos = torch.arange(T, device=ids.device).expand_as(attention_mask)
        last = torch.where(attention_mask.bool(), pos, torch.full_like(pos, -1)).max(1).values
        return values[torch.arange(len(ids), device=ids.device), last]


@dataclass
class RewardConfig:
    loss: Literal["bt", "pl"] = field(default="bt", metadata={"help": "bt: Bradley-Terry pairs; pl: Plackett-Luce rankings"})
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate"})
    num_train_epochs: int = field(default=1, metadata={"help": "passes over the training rows"})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "rows per step"})
    max_length: int = field(default=256, metadata={"help": "prompt + completion tokens"})
    chat: bool = field(default=False, metadata={"help": "render prompts with the chat template"})
    seed: int = field(default=0, metadata={"help": "shuffle seed"})


class RewardScorer:
    """Tokenizes (prompt, completion) texts and scores them with a RewardModel in batches."""

    def __init__(self, rm: RewardModel, tok, max_length: int = 256, chat: bool = False):
        self.rm, self.tok, self.max_length, self.chat = rm, tok, max_length, chat

    def batch(self, prompts: list[str], completions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = []
        for p, c in zip(prompts, completions):
            pi, ci = truncate(encode_prompt(self.tok, p, self.chat), encode_completion(self.tok, c), self.max_length)
            seqs.append(pi + ci)
        ids, mask = pad_right(seqs, pad_id_of(self.tok))
        dev = next(self.rm.parameters()).device
        return ids.to(dev), mask.to(dev)

    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        return self.rm.score(*self.batch(prompts, completions))


def _rankings(rows: list[dict], loss: str) -> list[tuple[str, list[str]]]:
    """Rows -> (prompt, completions best first). BT uses pairs; PL rankings (pairs are K=2 rankings)."""
    out = []
    for i, r in enumerate(rows):
        if "completions" in r:
            if loss == "bt":  # expand into all K(K-1)/2 pairs, as InstructGPT does
                c = r["completions"]
                out += [(r["prompt"], [c[a], c[b]]) for a in range(len(c)) for b in range(a + 1, len(c))]
            else:
                out.append((r["prompt"], list(r["completions"])))
        elif "chosen" in r:
            out.append((r["prompt"], [r["chosen"], r["rejected"]]))
        else:
            raise UserError(f"reward data row {i}: needs chosen/rejected or completions")
    return out


def train_reward_model(rm: RewardModel, tok, rows: list[dict], cfg: RewardConfig, metrics=None) -> list[dict]:
    items = _rankings(rows, cfg.loss)
    scorer = RewardScorer(rm, tok, cfg.max_length, cfg.chat)
    opt = torch.optim.AdamW([p for p in rm.parameters() if p.requires_grad], lr=cfg.learning_rate, foreach=True)
    guard = NanGuard(rm, opt)
    rng, logs, step, log = random.Random(cfg.seed), [], 0, get_logger()
    rm.train()
    for epoch in range(cfg.num_train_epochs):
        order = list(range(len(items)))
        rng.shuffle(order)
        for s in range(0, len(order), cfg.per_device_train_batch_size):
            batch = [items[i] for i in order[s:s + cfg.per_device_train_batch_size]]
            K = max(len(c) for _, c in batch)
            prompts = [p for p, c in batch for _ in range(K)]
            comps = [(c + [c[-1]] * (K - len(c)))[k] for _, c in batch for k in range(K)]
            scores = scorer(prompts, comps).view(len(batch), K)
            valid = torch.tensor([[k < len(c) for k in range(K)] for _, c in batch], device=scores.device)
            if cfg.loss == "bt" and K == 2:
                loss = bradley_terry_loss(scores[:, 0], scores[:, 1])
            else:
                loss = plackett_luce_loss(scores, valid)
            applied = guard.step(loss)
            step += 1
            acc = (scores[:, 0] > scores[:, 1]).float().mean().item()
            rec = {"step": step, "epoch": epoch, "loss": loss.item(), "accuracy": acc, "applied": applied}
            logs.append(rec)
            if metrics is not None:
                metrics.write(**rec)
            if step % 20 == 0:
                log.info("reward step %d loss %.4f acc %.3f", step, rec["loss"], acc)
    rm.eval()
    return logs


@torch.no_grad()
def pairwise_accuracy(rm: RewardModel, tok, rows: list[dict], max_length: int = 256, chat: bool = False,
                      batch_size: int = 16) -> float:
    """Fraction of held-out (better, worse) pairs ranked correctly; rankings count all their pairs."""
    pairs = [(p, c[0], c[1]) for p, c in _rankings(rows, "bt")]
    if not pairs:
        raise UserError("pairwise accuracy: no evaluation pairs")
    scorer, correct = RewardScorer(rm, tok, max_length, chat), 0
    was = rm.training
    rm.eval()
    for s in range(0, len(pairs), batch_size):
        b = pairs[s:s + batch_size]
        sc = scorer([p for p, _, _ in b] * 2, [w for _, w, _ in b] + [l for _, _, l in b])
        correct += int((sc[:len(b)] > sc[len(b):]).sum())
    rm.train(was)
    return correct / len(pairs)
