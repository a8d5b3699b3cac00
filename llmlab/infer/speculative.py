"""Speculative decoding: draft k tokens cheaply, verify them with one forward of the target model.

Drafters:
- prompt lookup (Saxena 2023; vLLM's `ngram`): the last n tokens (n = 3, then 2, then 1) are
  searched for earlier in the sequence (prompt + output); the tokens that followed the most recent
  earlier occurrence are the draft. Free, and strong on copy-heavy tasks (rewrite, summarise,
  extract, code edits), useless on free text;
- a draft model (Leviathan et al. 2023; Chen et al. 2023): any smaller model with the target's
  tokenizer proposes k tokens autoregressively, sampled with the request's own settings.

Verification (`accept`): the target scores [last token] + draft in one forward, giving its
distribution p_i at every draft position and one more. Draft token x_i, drawn from q_i, is accepted
with probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection the emitted token is drawn
from the residual norm(max(p_i - q_i, 0)) and the rest is dropped; if all k are accepted a bonus
token is drawn from p_{k+1}. Each emitted token is then distributed exactly as p (Leviathan et al.
2023, Theorem 1): sampled outputs keep the target's distribution. A deterministic drafter (prompt
lookup) is q = one-hot(x): accept with probability p(x), resample from p with x removed. Greedy
decoding has one-hot p: the emitted tokens are the target's argmaxes, i.e. plain greedy decoding.

Fallback: speculation costs a wider forward per step, and small targets with small drafts are often
slower (Python per-step overhead dominates). `Fallback` alternates probe windows of speculative and
plain steps, measures emitted tokens per second of each, and keeps the faster, re-probing
periodically.
"""
from __future__ import annotations

import time

import torch

from llmlab.errors import UserError
from llmlab.infer.runner import ContiguousDecoder
from llmlab.infer.sampling import SamplingParams, probs_for


def prompt_lookup(tokens: list[int], k: int, max_n: int = 3, min_n: int = 1) -> list[int]:
    """The k tokens that followed the most recent earlier occurrence of tokens' last n-gram
    (longest n first); [] when no n-gram recurs."""
    L = len(tokens)
    for n in range(min(max_n, L - 1), min_n - 1, -1):
        tail = tokens[L - n:]
        for i in range(L - n - 1, -1, -1):  # most recent earlier occurrence first
            if tokens[i:i + n] == tail:
                return tokens[i + n:i + n + k]
    return []


def accept(draft: list[int], draft_probs: list[torch.Tensor] | None, target_probs: torch.Tensor,
           generator: torch.Generator | None = None) -> tuple[list[int], int]:
    """Rejection-sampling verification (Leviathan et al. 2023, Algorithm 1).
    draft: k proposed ids; draft_probs: their k proposal distributions (V,) or None for a
    deterministic drafter; target_probs: (k + 1, V) the target's processed distributions.
    -> (emitted ids: accepted draft prefix + one corrected or bonus token, number accepted)."""
    for i, x in enumerate(draft):
        p = target_probs[i]
        q = None if draft_probs is None else draft_probs[i]
        px = float(p[x])
        ratio = px if q is None else (px / float(q[x]) if float(q[x]) > 0 else 1.0)
        if ratio >= 1.0 or float(torch.rand((), generator=generator, device=p.device)) < ratio:
            continue
        if q is None:
            residual = p.clone()
            residual[x] = 0.0
        else:
            residual = (p - q).clamp_min(0.0)
        if not float(residual.sum()) > 0:  # p == q up to rounding: any token of p is exact
            residual = p
        return draft[:i] + [_draw(residual, generator)], i
    return list(draft) + [_draw(target_probs[len(draft)], generator)], len(draft)


def _draw(probs: torch.Tensor, generator) -> int:
    nz = torch.nonzero(probs)
    if nz.numel() == 1:  # one-hot (greedy): no random number consumed
        return int(nz[0, 0])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


def check_same_tokenizer(target_tok, draft_tok, draft_ref: str) -> None:
    """A draft model must share the target's vocabulary id for id (its drafts are verified as ids)."""
    if target_tok is None or draft_tok is None:
        return
    if target_tok.vocab_size != draft_tok.vocab_size or target_tok.eos_id != draft_tok.eos_id:
        raise UserError(f"speculative draft model '{draft_ref}' has another tokenizer (vocabulary "
                        f"{draft_tok.vocab_size} vs {target_tok.vocab_size}, eos {draft_tok.eos_id} vs "
                        f"{target_tok.eos_id}); a draft model must use the target's tokenizer")
    for i in range(target_tok.vocab_size):
        if target_tok.decode_bytes([i]) != draft_tok.decode_bytes([i]):
            raise UserError(f"speculative draft model '{draft_ref}' has another tokenizer (token {i} is "
                            f"{draft_tok.decode_bytes([i])!r} there, {target_tok.decode_bytes([i])!r} in the "
                            f"target); a draft model must use the target's tokenizer")


class DraftModel:
    """Per sequence, a contiguous-cache decoder of the draft model kept in step with the sequence."""

    def __init__(self, model, target_vocab: int):
        if model.config.vocab_size < target_vocab:
            raise UserError(f"draft model vocabulary ({model.config.vocab_size}) is smaller than the "
                            f"target's ({target_vocab}); a draft model must use the target's tokenizer")
        self.model, self.vocab = model, target_vocab
        self.ctx = model.config.max_position_embeddings
        self.decoders: dict[int, ContiguousDecoder] = {}
        self.valid: dict[int, int] = {}  # leading cache positions known to hold the sequence's tokens

    def propose(self, key: int, tokens: list[int], k: int, params: SamplingParams, max_len: int,
                generator: torch.Generator) -> tuple[list[int], list[torch.Tensor]]:
        """k draft ids for the sequence `tokens` (+ their proposal distributions)."""
        if len(tokens) + k > min(self.ctx, max_len):
            k = min(self.ctx, max_len) - len(tokens)
        if k <= 0:
            return [], []
        dec = self.decoders.get(key)
        if dec is None:
            dec = self.decoders[key] = ContiguousDecoder(self.model, min(self.ctx, max_len))
        dec.n = min(dec.n, self.valid.get(key, 0))
        self.valid[key] = len(tokens)  # until verification says more
        feed, draft, qs = tokens[dec.n:], [], []
        for _ in range(k):
            logits = dec.forward(feed)[: self.vocab]
            q = probs_for(logits, params, tokens + draft, len(tokens))
            x = _draw(q, generator)
            draft.append(x)
            qs.append(q)
            feed = [x]
        return draft, qs

    def rollback(self, key: int, valid: int) -> None:
        """Keep the first `valid` positions of the sequence's draft cache (the rest was rejected)."""
        self.valid[key] = valid

    def drop(self, key: int) -> None:
        self.decoders.pop(key, None)
        self.valid.pop(key, None)


class Fallback:
    """Keep speculation on only while it is measured faster: probe `window` steps of each mode,
    compare emitted tokens per second, keep the faster for `hold` steps, then probe again."""

    def __init__(self, enabled: bool = True, window: int = 8, hold: int = 256):
        self.enabled, self.window, self.hold = enabled, window, hold
        self.step, self.rate = 0, {True: None, False: None}
        self._acc = {True: [0, 0.0], False: [0, 0.0]}
        self.choice = True

    def use_spec(self) -> bool:
        if not self.enabled:
            return True
        cycle = self.step % (2 * self.window + self.hold)
        return cycle < self.window if cycle < 2 * self.window else self.choice

    def record(self, spec: bool, tokens: int, seconds: float) -> None:
        if not self.enabled:
            return
        cycle = self.step % (2 * self.window + self.hold)
        self.step += 1
        if cycle < 2 * self.window:
            acc = self._acc[spec]
            acc[0] += tokens
            acc[1] += seconds
            if cycle == 2 * self.window - 1:
                for m in (True, False):
                    n, t = self._acc[m]
                    self.rate[m] = n / t if t > 0 else None
                    self._acc[m] = [0, 0.0]
                if self.rate[True] is not None and self.rate[False] is not None:
                    self.choice = self.rate[True] >= self.rate[False]


# ---------------------------------------------------------------- the engine's speculative step
def propose(engine, s) -> tuple[list[int], list | None]:
    """Draft tokens for the engine's sequence s (none for constrained requests or at the end of
    the budget) -> (ids, proposal distributions or None)."""
    p = s.request.params
    k = min(engine.spec_k, p.max_new_tokens - s.num_generated - 1, engine.ctx - len(s.tokens) - 1)
    if k <= 0 or s.processor is not None:
        return [], None
    if engine.draft is None:
        return prompt_lookup(s.tokens, k), None
    limit = len(s.request.prompt_ids) + p.max_new_tokens + engine.spec_k + 1
    return engine.draft.propose(id(s), s.tokens, k, p, limit, s.generator)


def verify_step(engine, batch: list, drafts: dict, out: list) -> int:
    """Verify every sequence's draft in one forward ([last token] + draft each), accept by
    rejection sampling (`accept`), emit; -> tokens emitted."""
    starts, items = [], []
    for s in batch:
        d = drafts.get(id(s), ([], None))[0]
        starts.append(s.table.num_tokens)
        engine.cache.reserve(s.table, s.table.num_tokens + 1 + len(d))
        items.append((s.table, [s.tokens[-1]] + d, True))
    logits_all = engine.runner.prefill_many(items, decode_weights=True)
    emitted = 0
    for s, start, rows in zip(batch, starts, logits_all):
        d, qs = drafts.get(id(s), ([], None))
        if s.finished:  # a sibling sample failed the request
            continue
        if not d:  # nothing drafted: the usual choice (processors, seeds as without speculation)
            engine.cache.truncate(s.table, start + 1)
            emitted += engine._emit(s, rows[0], out) is not None
            continue
        p, n0 = s.request.params, len(s.request.prompt_ids)
        try:
            target = torch.stack([probs_for(rows[i], p, s.tokens + d[:i], n0) for i in range(len(d) + 1)])
            toks, a = accept(d, qs, target, s.generator)
        except Exception as e:  # noqa: BLE001 - this request's failure alone
            engine._fail(s.request, f"sampling failed: {e}", out)
            continue
        st = engine.stats
        st["spec_steps"] += 1
        st["spec_drafted"] += len(d)
        st["spec_accepted"] += a
        st["spec_emitted"] += len(toks)
        engine.cache.truncate(s.table, start + 1 + a)  # the rejected drafts' keys are dropped
        if engine.draft is not None:
            engine.draft.rollback(id(s), len(s.tokens) + min(a, len(d) - 1))
        for i, t in enumerate(toks):
            emitted += 1
            if engine._emit(s, rows[i], out, t) is None or s.finished:
                break
    return emitted


def summary(st: dict, fallback: Fallback) -> dict:
    """Speculation so far: mean accepted draft tokens and emitted tokens per verification, the
    acceptance rate, and what the fallback measured (emitted tokens/s with and without)."""
    n = max(st["spec_steps"], 1)
    return {"mean_accepted": st["spec_accepted"] / n, "mean_emitted": st["spec_emitted"] / n,
            "acceptance_rate": st["spec_accepted"] / max(st["spec_drafted"], 1), "verify_steps": st["spec_steps"],
            "speculating": fallback.use_spec(), "rate_tok_s": dict(fallback.rate)}


def timer():
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0
