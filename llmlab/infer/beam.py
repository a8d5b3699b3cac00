"""Beam search over the paged KV cache, with the scoring and stopping rules of HF `generate`.

Each step every live beam proposes its continuations; the 2W best by total log-probability
(W = beam width) are ranked. A candidate ending in EOS (or reaching max_new_tokens) among the
top W becomes a finished hypothesis scored sum_logprob / generated_len ** length_penalty
(Wu et al. 2016 use a smoothed variant; HF and we use this plain one); the W best unfinished
candidates are the next beams. The search stops when
- early_stopping=True: W hypotheses are finished;
- early_stopping=False: W are finished and the best live beam, scored at its current length,
  cannot beat the worst finished one (HF's heuristic);
- early_stopping="never": as False, but a positive length penalty is evaluated at
  max_new_tokens (the exact bound for the canonical algorithm);
- every candidate is finished (max_new_tokens reached).

Beams share KV blocks: a new beam is a fork of its parent's block table (reference counts), and
the only block ever copied is the partly filled last one, on the first write (copy-on-write).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from llmlab.infer.paged import BlockTable, PagedKVCache
from llmlab.infer.runner import PagedRunner


@dataclass
class Hypothesis:
    tokens: list[int]  # generated tokens (without the EOS)
    score: float  # length-normalised log-probability
    logprob: float  # sum of token log-probabilities (including EOS when it ended with one)


@torch.inference_mode()
def beam_search(model, prompt_ids: list[int], num_beams: int = 4, max_new_tokens: int = 32,
                length_penalty: float = 1.0, early_stopping: bool | str = False, n_best: int = 1,
                eos_ids: set[int] | None = None, runner: PagedRunner | None = None) -> list[Hypothesis]:
    """-> the n_best finished hypotheses, best first."""
    if not 1 <= n_best <= num_beams:
        raise ValueError(f"n_best must be in [1, num_beams={num_beams}], got {n_best}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be true, false or 'never', got {early_stopping!r}")
    W, eos = num_beams, set(eos_ids or ())
    if runner is None:
        blocks = num_beams * 2 * (-(-(len(prompt_ids) + max_new_tokens) // 16) + 1)
        runner = PagedRunner(model, PagedKVCache.for_model(model, blocks))
    cache = runner.cache
    root = BlockTable()
    cache.reserve(root, len(prompt_ids))
    logits = runner.prefill(root, prompt_ids)[None]
    beams = [(root, [], 0.0)]  # (block table, generated tokens, sum logprob)
    finished: list[Hypothesis] = []
    unsatisfied = True
    for g in range(max_new_tokens):
        lp = torch.log_softmax(logits.float(), -1) + torch.tensor([b[2] for b in beams])[:, None]
        V = lp.shape[-1]
        top_scores, top_idx = lp.flatten().topk(min(2 * W, lp.numel()))
        last = g + 1 == max_new_tokens
        next_beams = []
        full = len(finished) >= W and early_stopping is True
        for rank, (s, i) in enumerate(zip(top_scores.tolist(), top_idx.tolist())):
            b, t = divmod(i, V)
            hit = t in eos or last
            if hit:
                if rank < W and unsatisfied and not full:
                    toks = beams[b][1] + ([] if t in eos else [t])
                    finished.append(Hypothesis(toks, s / (g + 1) ** length_penalty, s))
            elif len(next_beams) < W:
                next_beams.append((b, t, s))
        finished = sorted(finished, key=lambda h: -h.score)[:W]
        if last or not next_beams:
            break
        new = [(cache.fork(beams[b][0]), beams[b][1] + [t], s) for b, t, s in next_beams]
        for table, _, _ in beams:
            cache.free(table)
        for table, _, _ in new:  # copies the tail block only while it is still shared (COW)
            cache.reserve(table, table.num_tokens + 1)
        beams = new
        # heuristic stop (HF `_check_early_stop_heuristic`): evaluated after each step
        if len(finished) >= W:
            hyp_len = max_new_tokens if (early_stopping == "never" and length_penalty > 0) else g + 1
            best_running = beams[0][2] / hyp_len ** length_penalty
            unsatisfied = unsatisfied and best_running > finished[-1].score
        if not unsatisfied or (len(finished) >= W and early_stopping is True):
            break
        logits = runner.decode([b[0] for b in beams], [b[1][-1] for b in beams])
    for table, _, _ in beams:
        cache.free(table)
    return finished[:n_best]
