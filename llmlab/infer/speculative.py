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
slower (Python per-step overhead dominates). `Fallback` alternates speculative and plain steps while
it probes, until their emitted tokens per second differ clearly (or a probe limit: then plain), keeps
the faster, and re-probes after a hold that grows while the choice stays the same.
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
    """Keep speculation on only while it is measured faster.

    Probing: speculative and plain steps alternate one by one (both see the same load), at least
    `min_probe` of each; it goes on, up to `max_probe` of each, while the two are within their noise
    (per-step emitted tokens/s: the means differ by less than `z` standard errors). Then the faster
    mode by emitted tokens / seconds (`rate`) is kept for `hold` steps, plain if still undecided at
    `max_probe` (speculation has to show it is faster); a decision the next probe confirms doubles
    the hold (up to `max_hold`), a change resets it. Session 8's fixed 8-step windows kept a slower
    speculation at 2 threads under load (docs/LOG.md)."""

    def __init__(self, enabled: bool = True, min_probe: int = 8, max_probe: int = 64, hold: int = 128,
                 max_hold: int = 2048, z: float = 2.0):
        self.enabled, self.min_probe, self.max_probe, self.z = enabled, min_probe, max_probe, z
        self.hold0, self.max_hold = hold, max_hold
        self.rate: dict = {True: None, False: None}
        self.choice, self.decided = True, None  # decided: the last probe's choice (None: none yet)
        self.hold, self.hold_left = hold, 0  # hold_left 0: probing
        self._reset()

    def _reset(self) -> None:
        self._n = 0
        self._acc = {True: [0, 0.0], False: [0, 0.0]}  # tokens, seconds
        self._steps: dict = {True: [], False: []}  # per-step tokens/s

    def use_spec(self) -> bool:
        if not self.enabled:
            return True
        return self.choice if self.hold_left > 0 else self._n % 2 == 0

    def record(self, spec: bool, tokens: int, seconds: float) -> None:
        if not self.enabled:
            return
        if self.hold_left > 0:
            self.hold_left -= 1
            if self.hold_left == 0:
                self._reset()
            return
        self._n += 1
        acc = self._acc[spec]
        acc[0] += tokens
        acc[1] += seconds
        self._steps[spec].append(tokens / max(seconds, 1e-9))
        n = min(len(self._steps[True]), len(self._steps[False]))
        if n >= self.min_probe and (self._clear() or n >= self.max_probe):
            self._decide()

    def _clear(self) -> bool:
        """Do the per-step rates of the two modes differ by more than z standard errors?"""
        mean, var = {}, {}
        for m, xs in self._steps.items():
            mean[m] = sum(xs) / len(xs)
            var[m] = sum((x - mean[m]) ** 2 for x in xs) / max(len(xs) - 1, 1) / len(xs)
        return abs(mean[True] - mean[False]) > self.z * (var[True] + var[False]) ** 0.5

    def _decide(self) -> None:
        for m, (n, t) in self._acc.items():
            self.rate[m] = n / t if t > 0 else None
        faster = self.rate[True] is not None and self.rate[False] is not None and self.rate[True] > self.rate[False]
        choice = faster and self._clear()
        self.hold = min(2 * self.hold, self.max_hold) if choice == self.decided else self.hold0
        self.choice = self.decided = choice
        self.hold_left = self.hold


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
