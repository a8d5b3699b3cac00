"""One offline preference-training loop for DPO, IPO, KTO and ORPO (losses in preference_losses.py).

Reference log-probs never change, so they are computed once, up front, in batches under no_grad
and cached per row (then the reference model can be dropped); each training step runs the policy
only. ORPO needs no reference at all. KTO's reference point z0 uses mismatched pairs
(prompt_i, completion_{i-1}), fixed per dataset so their reference log-probs can be cached too.
IPO and ORPO use per-token averaged log-probs (TRL's choice for IPO; ORPO's paper defines the odds
on the length-normalised likelihood); DPO and KTO use sums.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Literal

import torch

from llmlab.align.encode import encode_completion, encode_prompt, pad_id_of, truncate
from llmlab.align.logprobs import sequence_logprobs
from llmlab.align.nan_guard import NanGuard
from llmlab.align.preference_data import check_rows, pairs_to_unpaired
from llmlab.align.preference_losses import dpo_loss, ipo_loss, kto_loss, kto_reference_point, orpo_loss
from llmlab.errors import UserError
from llmlab.log import get_logger

PAIRED = ("dpo", "ipo", "orpo")
NO_REFERENCE = ("orpo", "rrhf", "pro", "coh")  # rrhf/pro/coh: ranking_trainer.RankingTrainer


@dataclass
class PreferenceConfig:
    loss_type: Literal["dpo", "ipo", "kto", "orpo", "rrhf", "pro", "coh"] = field(default="dpo", metadata={
        "help": "dpo, ipo, kto, orpo, or (no reference, ranking_trainer.py) rrhf, pro, coh"})
    beta: float = field(default=0.1, metadata={"help": "DPO/KTO beta, IPO tau, ORPO lambda, RRHF rank weight, PRO SFT weight"})
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate"})
    num_train_epochs: int = field(default=1, metadata={"help": "passes over the data"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many steps (0 = use epochs)"})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "pairs (or unpaired rows) per step"})
    max_length: int = field(default=256, metadata={"help": "prompt + completion tokens"})
    desirable_weight: float = field(default=1.0, metadata={"help": "KTO lambda_D"})
    undesirable_weight: float = field(default=1.0, metadata={"help": "KTO lambda_U"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    chat: bool = field(default=False, metadata={"help": "render prompts with the chat template"})
    seed: int = field(default=0, metadata={"help": "shuffle seed"})


class PreferenceTrainer:
    def __init__(self, policy, ref, tok, rows: list[dict], cfg: PreferenceConfig, metrics=None):
        self.cfg, self.policy, self.tok, self.metrics = cfg, policy, tok, metrics
        self.pad = pad_id_of(tok)
        self.log = get_logger()
        rows = check_rows(rows, on_bad="skip", source=f"{cfg.loss_type} data")
        if not rows:
            raise UserError(f"{cfg.loss_type}: no usable rows")
        if cfg.loss_type not in NO_REFERENCE:
            if ref is None:
                raise UserError(f"{cfg.loss_type} needs a reference model (ORPO, RRHF, PRO and CoH work without one)")
            if ref.config.vocab_size != policy.config.vocab_size:
                raise UserError(f"policy and reference vocabularies differ ({policy.config.vocab_size} vs "
                                f"{ref.config.vocab_size}): they must share one tokenizer")
        self.items = self._tokenize(rows)
        self.ref_forward_calls = 0
        self.ref_cache = self._cache_reference(ref) if cfg.loss_type not in NO_REFERENCE else None
        self.opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.learning_rate, foreach=True)
        self.guard = NanGuard(policy, self.opt, cfg.max_grad_norm)
        self.rng = random.Random(cfg.seed)
        self.step_count = 0

    # ---- data --------------------------------------------------------------------------------
    def _enc(self, prompt: str, completion: str) -> tuple[list[int], list[int]]:
        return truncate(encode_prompt(self.tok, prompt, self.cfg.chat), encode_completion(self.tok, completion),
                        self.cfg.max_length)

    def _tokenize(self, rows: list[dict]) -> list[tuple]:
        if self.cfg.loss_type in PAIRED:
            if any("chosen" not in r for r in rows):
                raise UserError(f"{self.cfg.loss_type} needs prompt/chosen/rejected rows")
            out = []
            for r in rows:
                p, c = self._enc(r["prompt"], r["chosen"])
                p2, rj = self._enc(r["prompt"], r["rejected"])
                out.append((p, c, p2, rj))
            return out
        if all("chosen" in r for r in rows):
            rows = pairs_to_unpaired(rows)
        if any("completion" not in r for r in rows):
            raise UserError("kto needs prompt/completion/label rows (or pairs, which are split)")
        if len({r["label"] for r in rows}) < 2:
            self.log.warning("kto: all rows have the same label")
        enc = [self._enc(r["prompt"], r["completion"]) for r in rows]
        n = len(enc)
        # mismatched pair (prompt_i, completion_{i-1}) for the KL reference point (TRL's pairing)
        return [(p, y, r["label"], self._enc(rows[i]["prompt"], rows[(i - 1) % n]["completion"]))
                for i, ((p, y), r) in enumerate(zip(enc, rows))]

    # ---- log-probs -----------------------------------------------------------------------------
    def _logps(self, model, pairs: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
        return sequence_logprobs(model, [p for p, _ in pairs], [c for _, c in pairs], self.pad)

    def _pairs_of(self, idx: list[int]) -> list[tuple[list[int], list[int]]]:
        if self.cfg.loss_type in PAIRED:
            return [(self.items[i][0], self.items[i][1]) for i in idx] + [(self.items[i][2], self.items[i][3]) for i in idx]
        return [(self.items[i][0], self.items[i][1]) for i in idx] + [self.items[i][3] for i in idx]

    @torch.no_grad()
    def _cache_reference(self, ref) -> torch.Tensor:
        """(N, 2) summed reference log-probs: (chosen, rejected) or (completion, mismatched)."""
        ref.eval()
        out, bs = [], self.cfg.per_device_train_batch_size
        for s in range(0, len(self.items), bs):
            idx = list(range(s, min(s + bs, len(self.items))))
            lp, _ = self._logps(ref, self._pairs_of(idx))
            self.ref_forward_calls += 1
            out.append(lp.view(2, -1).T.float().cpu())
        return torch.cat(out)

    # ---- training ------------------------------------------------------------------------------
    def loss(self, idx: list[int]) -> tuple[torch.Tensor, dict]:
        cfg, n = self.cfg, len(idx)
        lp, ntok = self._logps(self.policy, self._pairs_of(idx))
        lp, ntok = lp.float(), ntok.float()
        ref = self.ref_cache[idx].to(lp.device) if self.ref_cache is not None else None
        if cfg.loss_type == "dpo":
            loss, st = dpo_loss(lp[:n], lp[n:], ref[:, 0], ref[:, 1], cfg.beta)
        elif cfg.loss_type == "ipo":
            loss, st = ipo_loss(lp[:n] / ntok[:n], lp[n:] / ntok[n:], ref[:, 0] / ntok[:n], ref[:, 1] / ntok[n:], cfg.beta)
        elif cfg.loss_type == "orpo":
            avg = lp / ntok
            loss, st = orpo_loss(avg[:n], avg[n:], -avg[:n], cfg.beta)
        else:  # kto: policy log-probs of the mismatched pairs only set z0 (no gradient)
            z0 = kto_reference_point(lp[n:].detach(), ref[:, 1])
            labels = torch.tensor([self.items[i][2] for i in idx], device=lp.device)
            loss, st = kto_loss(lp[:n], ref[:, 0], labels, z0, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)
        return loss.mean(), {k: v.float().mean().item() for k, v in st.items()}

    def train(self) -> list[dict]:
        cfg, logs = self.cfg, []
        self.policy.train()
        for epoch in range(cfg.num_train_epochs if not cfg.max_steps else 10 ** 9):
            order = list(range(len(self.items)))
            self.rng.shuffle(order)
            for s in range(0, len(order), cfg.per_device_train_batch_size):
                t0 = time.perf_counter()
                loss, st = self.loss(order[s:s + cfg.per_device_train_batch_size])
                applied = self.guard.step(loss)
                self.step_count += 1
                rec = {"step": self.step_count, "epoch": epoch, "loss": loss.item(), **st, "applied": applied,
                       "step_time": time.perf_counter() - t0}
                logs.append(rec)
                if self.metrics is not None:
                    self.metrics.write(**rec)
                if self.step_count % 20 == 0:
                    self.log.info("%s step %d loss %.4f", cfg.loss_type, self.step_count, rec["loss"])
                if cfg.max_steps and self.step_count >= cfg.max_steps:
                    self.policy.eval()
                    return logs
        self.policy.eval()
        return logs


@torch.no_grad()
def logprob_preference_accuracy(model, tok, rows: list[dict], max_length: int = 256, chat: bool = False,
                                ref=None, batch_size: int = 8) -> float:
    """Held-out fraction of pairs where the model prefers chosen: mean token log-prob of chosen >
    rejected, or, with `ref`, the implicit-reward margin log(pi/pi_ref)(y_w) - (y_l) > 0."""
    pad, correct = pad_id_of(tok), 0
    for s in range(0, len(rows), batch_size):
        b = rows[s:s + batch_size]
        enc = [truncate(encode_prompt(tok, r["prompt"], chat), encode_completion(tok, r[k]), max_length)
               for k in ("chosen", "rejected") for r in b]
        ps, cs = [p for p, _ in enc], [c for _, c in enc]
        lp, n = sequence_logprobs(model, ps, cs, pad)
        score = lp / n
        if ref is not None:
            score = lp - sequence_logprobs(ref, ps, cs, pad)[0]
        correct += int((score[:len(b)] > score[len(b):]).sum())
    return correct / len(rows)
