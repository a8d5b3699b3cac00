"""RRHF, PRO and Chain of Hindsight on the one preference loop (`PreferenceTrainer`: batching, AdamW,
NaN guard, logging); none of the three needs a reference model.

- rrhf / pro (ranking_losses.py): rows are rankings {prompt, completions (best first), rewards?} or
  pairs {prompt, chosen, rejected} (a ranking of two, rewards [1, 0]). Without `rewards` a ranking
  of K gets K-1, ..., 0.
- coh, Chain of Hindsight (Liu, Sferrazza, Abbeel 2023, "Chain of hindsight aligns language models
  with feedback"): each pair becomes two sequences, "x  A good answer: y_w  A bad answer: y_l" and
  the reverse order; the NLL is taken on the answer tokens only (the feedback phrases are given,
  not learned), averaged per token. At inference the model is prompted with "A good answer:".
  Segments are tokenised separately and concatenated.
"""
from __future__ import annotations

import torch

from llmlab.align.encode import encode_completion, encode_prompt, truncate
from llmlab.align.logprobs import build_batch, sequence_logprobs, token_logprobs
from llmlab.align.preference_trainer import PreferenceTrainer
from llmlab.align.ranking_losses import pro_loss, rrhf_loss
from llmlab.errors import UserError

RANKING = ("rrhf", "pro", "coh")
GOOD, BAD = "A good answer:", "A bad answer:"


def as_ranking(row: dict) -> tuple[list[str], list[float]]:
    """(completions, rewards) of a ranking or pair row."""
    if "completions" in row:
        comps = list(row["completions"])
        rewards = row.get("rewards") or [float(len(comps) - 1 - i) for i in range(len(comps))]
    elif "chosen" in row:
        comps, rewards = [row["chosen"], row["rejected"]], row.get("rewards") or [1.0, 0.0]
    else:
        raise UserError("rrhf/pro need rankings {prompt, completions[, rewards]} or pairs {prompt, chosen, rejected}")
    if len(rewards) != len(comps):
        raise UserError(f"a ranking has {len(comps)} completions but {len(rewards)} rewards")
    return comps, [float(r) for r in rewards]


def hindsight_segments(row: dict, good_first: bool) -> list[tuple[str, bool]]:
    """A CoH completion as (text, trained) segments: feedback phrases untrained, answers trained."""
    a = [(GOOD + " ", False), (row["chosen"], True)]
    b = [("\n" + BAD + " ", False), (row["rejected"], True)]
    if not good_first:
        a, b = [(BAD + " ", False), (row["rejected"], True)], [("\n" + GOOD + " ", False), (row["chosen"], True)]
    return a + b


def encode_segments(tok, segments: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """Token ids and a 0/1 loss mask; EOS (trained) closes the sequence."""
    ids, mask = [], []
    for text, trained in segments:
        t = tok.encode(text)
        ids += t
        mask += [int(trained)] * len(t)
    if tok.eos_id is not None:
        ids.append(tok.eos_id)
        mask.append(1)
    return ids, mask


class RankingTrainer(PreferenceTrainer):
    """`PreferenceTrainer` with loss_type rrhf, pro or coh (cfg.beta: RRHF rank weight, PRO SFT weight)."""

    def _tokenize(self, rows: list[dict]) -> list[tuple]:
        if self.cfg.loss_type not in RANKING:
            raise UserError(f"RankingTrainer trains {', '.join(RANKING)}, not {self.cfg.loss_type}")
        if self.cfg.loss_type == "coh":
            return self._tokenize_coh(rows)
        out = []
        for r in rows:
            comps, rewards = as_ranking(r)
            out.append(([self._enc(r["prompt"], c) for c in comps], rewards))
        return out

    def _tokenize_coh(self, rows: list[dict]) -> list[tuple]:
        if any("chosen" not in r for r in rows):
            raise UserError("coh needs pairs {prompt, chosen, rejected}")
        out = []
        for r in rows:
            p = encode_prompt(self.tok, r["prompt"], self.cfg.chat)
            for good_first in (True, False):
                ids, mask = encode_segments(self.tok, hindsight_segments(r, good_first))
                keep = max(1, self.cfg.max_length - len(ids))
                out.append((p[-keep:], ids[:self.cfg.max_length - 1], mask[:self.cfg.max_length - 1]))
        return out

    def loss(self, idx: list[int]) -> tuple[torch.Tensor, dict]:
        if self.cfg.loss_type == "coh":
            return self._coh_loss(idx)
        flat = [pc for i in idx for pc in self.items[i][0]]
        lp, n = sequence_logprobs(self.policy, [p for p, _ in flat], [c for _, c in flat], self.pad)
        avg = lp.float() / n.float()
        K = max(len(self.items[i][0]) for i in idx)
        scores = avg.new_zeros(len(idx), K)
        rewards = avg.new_full((len(idx), K), float("-inf"))
        mask = torch.zeros(len(idx), K, dtype=torch.bool, device=avg.device)
        at = 0
        for b, i in enumerate(idx):
            k = len(self.items[i][0])
            scores[b, :k] = avg[at:at + k]
            rewards[b, :k] = torch.tensor(self.items[i][1], dtype=avg.dtype)
            mask[b, :k] = True
            at += k
        best = rewards.argmax(-1, keepdim=True)
        nll_best = -scores.gather(-1, best).squeeze(-1)
        rewards = rewards.masked_fill(~mask, 0.0)
        if self.cfg.loss_type == "rrhf":
            loss, st = rrhf_loss(scores, rewards, nll_best, mask, rank_weight=self.cfg.beta)
        else:
            loss, st = pro_loss(scores, rewards, nll_best, mask, beta=self.cfg.beta)
        top = scores.masked_fill(~mask, float("-inf")).argmax(-1, keepdim=True)
        st["accuracy"] = (top == best).float().squeeze(-1)  # the policy ranks the best response first
        return loss.mean(), {k: v.float().mean().item() for k, v in st.items()}

    def _coh_loss(self, idx: list[int]) -> tuple[torch.Tensor, dict]:
        rows = [self.items[i] for i in idx]
        ids, attn, _ = (x.to(next(self.policy.parameters()).device)
                        for x in build_batch([p for p, _, _ in rows], [c for _, c, _ in rows], self.pad))
        mask = torch.zeros(ids.shape[0], ids.shape[1] - 1, device=ids.device)
        for b, (p, c, m) in enumerate(rows):
            mask[b, len(p) - 1:len(p) - 1 + len(c)] = torch.tensor(m, dtype=mask.dtype)
        lp = token_logprobs(self.policy, ids, attn)
        nll = -(lp * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return nll.mean(), {"nll": nll.mean().item()}


@torch.no_grad()
def conditioned_accuracy(model, tok, rows: list[dict], prefix: str = GOOD, max_length: int = 256,
                         chat: bool = False, batch_size: int = 8) -> float:
    """Held-out fraction of pairs whose chosen answer has the higher mean token log-prob after
    `prefix` (CoH's "A good answer:"); prefix "" is `logprob_preference_accuracy`'s test."""
    from llmlab.align.encode import pad_id_of
    pad, correct, tail = pad_id_of(tok), 0, tok.encode(prefix + " ") if prefix else []
    for s in range(0, len(rows), batch_size):
        b = rows[s:s + batch_size]
        enc = [truncate(encode_prompt(tok, r["prompt"], chat) + tail, encode_completion(tok, r[k]), max_length)
               for k in ("chosen", "rejected") for r in b]
        lp, n = sequence_logprobs(model, [p for p, _ in enc], [c for _, c in enc], pad)
        score = lp / n
        correct += int((score[:len(b)] > score[len(b):]).sum())
    return correct / len(rows)


def best_worst_pairs(rows: list[dict]) -> list[dict]:
    """Rankings -> (best, worst) pairs for held-out preference accuracy; pairs pass through."""
    return [r if "chosen" in r else {"prompt": r["prompt"], "chosen": r["completions"][0],
                                     "rejected": r["completions"][-1]} for r in rows]


def heldout_accuracy(model, tok, rows: list[dict], cfg, ref=None) -> float:
    """`llmlab dpo`'s held-out preference accuracy for every loss_type: CoH is asked with its
    positive feedback phrase; the implicit-reward variant (ref) is for the reference-based losses."""
    from llmlab.align.preference_trainer import logprob_preference_accuracy
    rows = best_worst_pairs(rows)
    if cfg.loss_type == "coh":
        return conditioned_accuracy(model, tok, rows, GOOD, cfg.max_length, cfg.chat)
    return logprob_preference_accuracy(model, tok, rows, cfg.max_length, cfg.chat, ref=ref)
