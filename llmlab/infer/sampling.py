"""Next-token selection: every logits processor and sampler the engine and server use.

Order (the one HF `generate` and vLLM use): penalties on the raw logits, then temperature, then
truncation (top-k, top-p, min-p), then a draw.

- repetition penalty (Keskar et al. 2019, CTRL): a logit of a token already seen (prompt or
  output) is divided by p when positive and multiplied by p when negative;
- presence / frequency penalties (OpenAI API): logit -= presence * [count > 0] + frequency * count,
  counting generated tokens only;
- no-repeat n-gram (Paulus et al. 2018): ban a token that would complete an n-gram already present;
- temperature: logits / T; T = 0 means greedy (argmax);
- top-k (Fan et al. 2018): keep the k largest logits;
- top-p / nucleus (Holtzman et al. 2020): keep the smallest set whose probability reaches p;
- min-p (Nguyen et al. 2024): keep tokens with prob >= min_p * max prob.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None  # per-request generator: same seed, same output, whatever the batch
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    no_repeat_ngram_size: int = 0  # 0 = off
    stop: tuple[str, ...] = ()  # stop strings (not included in the output)
    stop_token_ids: tuple[int, ...] = ()  # stop tokens besides EOS (not included)
    ignore_eos: bool = False
    logprobs: int | None = None  # None = off; k = chosen token's logprob plus the k best alternatives
    n: int = 1  # parallel samples of one prompt (share the prompt's KV blocks)
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.stop = tuple([self.stop] if isinstance(self.stop, str) else self.stop)
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        checks = [
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}"),
            (0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}"),
            (self.max_new_tokens >= 0, f"max_new_tokens must be >= 0, got {self.max_new_tokens}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}"),
            (-2 <= self.presence_penalty <= 2, f"presence_penalty must be in [-2, 2], got {self.presence_penalty}"),
            (-2 <= self.frequency_penalty <= 2, f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}"),
            (self.no_repeat_ngram_size >= 0, f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, f"logprobs must be in [0, 20], got {self.logprobs}"),
            (self.n >= 1, f"n must be >= 1, got {self.n}"),
            (all(self.stop), "stop strings must be non-empty"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus / min-p set to -inf. logits: (..., V)."""
    if top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    if min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < min_p * probs.max(-1, keepdim=True).values, float("-inf"))
    return logits


def apply_penalties(logits: torch.Tensor, p: SamplingParams, context: list[int], n_prompt: int) -> torch.Tensor:
    """Repetition / presence / frequency / no-repeat-ngram on one row (V,). context = prompt + output."""
    if p.repetition_penalty != 1.0 and context:
        seen = torch.tensor(sorted(set(context)), device=logits.device)
        s = logits[seen]
        logits = logits.clone()
        logits[seen] = torch.where(s > 0, s / p.repetition_penalty, s * p.repetition_penalty)
    out = context[n_prompt:]
    if (p.presence_penalty or p.frequency_penalty) and out:
        ids, counts = torch.tensor(out, device=logits.device).unique(return_counts=True)
        logits = logits.clone()
        logits[ids] -= p.presence_penalty + p.frequency_penalty * counts.to(logits.dtype)
    if p.no_repeat_ngram_size > 0:
        banned = banned_ngram_tokens(context, p.no_repeat_ngram_size)
        if banned:
            logits = logits.clone()
            logits[list(banned)] = float("-inf")
    return logits


def banned_ngram_tokens(ids: list[int], n: int) -> set[int]:
    """Tokens t such that ids[-(n-1):] + [t] already occurs as an n-gram in ids."""
    if len(ids) + 1 < n:
        return set()
    prefix = tuple(ids[len(ids) - n + 1:]) if n > 1 else ()
    return {ids[i + n - 1] for i in range(len(ids) - n + 1) if tuple(ids[i:i + n - 1]) == prefix}


def needs_context(p: SamplingParams) -> bool:
    return p.repetition_penalty != 1.0 or bool(p.presence_penalty) or bool(p.frequency_penalty) \
        or p.no_repeat_ngram_size > 0


def choose(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None = None,
           context: list[int] | None = None, n_prompt: int = 0) -> int:
    """One row (V,) of raw logits -> the next token id, after penalties, temperature and truncation."""
    logits = logits.float()
    if needs_context(p):
        logits = apply_penalties(logits, p, context or [], n_prompt)
    if p.greedy:
        return int(logits.argmax())
    logits = filter_logits(logits / p.temperature, p.top_k, p.top_p, p.min_p)
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


def top_logprobs(logits: torch.Tensor, chosen: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """The chosen token's log-probability under the model (raw logits, before any processor;
    that is what scoring through /v1/completions needs) and the k most likely alternatives."""
    lp = torch.log_softmax(logits.float(), -1)
    top = []
    if k > 0:
        vals, idx = torch.topk(lp, k)
        top = [(int(i), float(v)) for i, v in zip(idx, vals)]
    return float(lp[chosen]), top


def sample_next(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> next ids (B,) (no penalties: they need each row's history; see `choose`)."""
    if p.temperature == 0:
        return logits.argmax(-1)
    logits = filter_logits(logits.float() / p.temperature, p.top_k, p.top_p, p.min_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
