"""Held-out evaluation of an aligned policy against the SFT model it started from.

- `arithmetic_splits`: disjoint train / dev / test arithmetic prompts (by question text), seeded;
  hyperparameters are chosen on dev, results reported on test.
- `decode`: batched decoding (greedy or sampled) that can run a reference model alongside the
  policy on the same tokens and return, per row, the exact KL(pi || pi_ref) summed over the
  generated tokens: sum_t sum_v pi(v|x,y<t) log(pi/pi_ref)(v|x,y<t). With y sampled from pi at
  temperature 1 this is an unbiased, low-variance estimate of the sequence-level KL
  E_y~pi[log pi(y|x) - log pi_ref(y|x)] (each step's sampled log-ratio replaced by its expectation).
- `score_completions`: reward-model scores of generated completions (EOS appended if missing,
  as `RewardScorer` does), with the prompts left-padded as in `decode` so a shared frozen trunk
  (frozen_trunk.py) finds their prefill memoised.
- `win_rate`: (wins + ties / 2) / n of one policy's answers against another's.
"""
from __future__ import annotations

import statistics

import torch

from llmlab.align.encode import encode_prompt, pad_id_of
from llmlab.align.preference_data import arithmetic_pairs
from llmlab.errors import UserError
from llmlab.infer.generate import CacheForward, generate_batch, pad_left
from llmlab.infer.sampling import SamplingParams


def _unique(rows: list[dict], exclude: set[str]) -> list[dict]:
    out, seen = [], set(exclude)
    for r in rows:
        if r["prompt"] not in seen:
            seen.add(r["prompt"])
            out.append(r)
    return out


def arithmetic_splits(n_test: int = 64, n_dev: int = 64, test_seed: int = 1000, dev_seed: int = 2000,
                      max_operand: int = 99) -> tuple[list[dict], list[dict]]:
    """(test, dev): distinct arithmetic questions, disjoint from each other."""
    test = _unique(arithmetic_pairs(20 * n_test, test_seed, max_operand), set())[:n_test]
    dev = _unique(arithmetic_pairs(20 * n_dev, dev_seed, max_operand), {r["prompt"] for r in test})[:n_dev]
    if len(test) < n_test or len(dev) < n_dev:
        raise UserError("arithmetic_splits: not enough distinct questions")
    return test, dev


def arithmetic_train(n: int, seed: int, exclude: list[dict], max_operand: int = 99) -> list[dict]:
    """n distinct training questions (seeded) that appear in none of the `exclude` rows."""
    rows = _unique(arithmetic_pairs(20 * n + 1000, 10_000 + seed, max_operand), {r["prompt"] for r in exclude})[:n]
    if len(rows) < n:
        raise UserError(f"arithmetic_train: only {len(rows)} distinct questions left, {n} asked")
    return rows


@torch.no_grad()
def decode(policy, tok, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0, seed: int = 0,
           ref=None) -> dict:
    """-> {"completions": token ids (with EOS when emitted), "texts", "kl": per-row KL to ref (or None)}.
    The KL compares the temperature-1 distributions, whatever the sampling temperature. Decoding is
    `llmlab.infer.generate.generate_batch`; the reference model runs alongside through its per-step
    callback, on the same tokens."""
    dev = next(policy.parameters()).device
    pad, eos = pad_id_of(tok), tok.eos_id
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
    kl = torch.zeros(len(prompts), device=dev)
    on_step = None
    if ref is not None:
        P = max(len(p) for p in prompts)
        ref_fwd = CacheForward(ref, prompts, pad, max(min(max_new_tokens, policy.config.max_position_embeddings - P), 0))
        was_ref = ref.training
        ref.eval()

        def on_step(step, logits, fed, alive):
            lp, lq = logits.float().log_softmax(-1), ref_fwd(fed).float().log_softmax(-1)
            step_kl = (lp.exp() * (lp - lq)).sum(-1)
            kl.add_(torch.where(torch.tensor(alive, device=dev), step_kl, torch.zeros_like(step_kl)))
    try:
        out = generate_batch(policy, prompts, params, stop_ids=[] if eos is None else [eos], pad_id=pad,
                             generator=torch.Generator(device=dev).manual_seed(seed), on_step=on_step)
    finally:
        if ref is not None:
            ref.train(was_ref)
    comps = out.completions()
    return {"completions": comps, "texts": out.texts(tok), "kl": kl.tolist() if ref is not None else None}


@torch.no_grad()
def score_completions(rm, tok, prompts: list[list[int]], completions: list[list[int]]) -> list[float]:
    """Reward-model score of each (prompt, completion) pair, read at the completion's last token."""
    if len(prompts) != len(completions):
        raise ValueError("prompts and completions differ in length")
    pad, eos = pad_id_of(tok), tok.eos_id
    comps = [c if (c and c[-1] == eos) or eos is None else c + [eos] for c in completions]
    p_ids, p_mask = pad_left(prompts, pad)
    width = max(len(c) for c in comps)
    c_ids = torch.tensor([c + [pad] * (width - len(c)) for c in comps], dtype=torch.long)
    c_mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in comps], dtype=torch.long)
    dev = next(rm.parameters()).device
    was = rm.training
    rm.eval()
    s = rm.score(torch.cat([p_ids, c_ids], 1).to(dev), torch.cat([p_mask, c_mask], 1).to(dev))
    rm.train(was)
    return s.float().tolist()


def win_rate(a: list[float], b: list[float], same: list[bool] | None = None) -> dict:
    """Row-wise comparison of scores a vs b (higher wins; equal, or `same` answer, is a tie)."""
    if len(a) != len(b) or not a:
        raise ValueError("win_rate needs two equal, non-empty lists")
    same = same or [False] * len(a)
    w = sum(1 for x, y, s in zip(a, b, same) if not s and x > y)
    lo = sum(1 for x, y, s in zip(a, b, same) if not s and x < y)
    t = len(a) - w - lo
    return {"win_rate": (w + t / 2) / len(a), "wins": w, "losses": lo, "ties": t}


def encode_prompts(tok, rows: list[dict], chat: bool = True) -> list[list[int]]:
    return [encode_prompt(tok, r["prompt"], chat) for r in rows]


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


@torch.no_grad()
def pair_logprobs(model, tok, rows: list[dict], max_length: int = 256, chat: bool = False,
                  batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs of each row's chosen and rejected answer -> (chosen (N,), rejected (N,))."""
    from llmlab.align.encode import encode_completion, truncate
    from llmlab.align.logprobs import sequence_logprobs
    pad, ch, rj = pad_id_of(tok), [], []
    was = model.training
    model.eval()
    for s in range(0, len(rows), batch_size):
        b = rows[s:s + batch_size]
        enc = [truncate(encode_prompt(tok, r["prompt"], chat), encode_completion(tok, r[k]), max_length)
               for r in b for k in ("chosen", "rejected")]
        lp, _ = sequence_logprobs(model, [p for p, _ in enc], [c for _, c in enc], pad)
        ch.append(lp[0::2].float().cpu())
        rj.append(lp[1::2].float().cpu())
    model.train(was)
    return torch.cat(ch), torch.cat(rj)


def implicit_reward_accuracy(policy_lp: tuple[torch.Tensor, torch.Tensor],
                             ref_lp: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Fraction of pairs whose implicit reward log(pi/pi_ref) is higher for chosen than for rejected."""
    margin = (policy_lp[0] - ref_lp[0]) - (policy_lp[1] - ref_lp[1])
    return float((margin > 0).float().mean())
