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

import math
from dataclasses import dataclass, field, fields

import torch


class SamplingError(ValueError):
    """A sampling setting out of its bounds; `field` names it (the server's error `param`)."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name


GREEDY_BELOW = 1e-5  # temperatures below this are greedy
SEED_MIN, SEED_MAX = -2 ** 63, 2 ** 64 - 1  # what torch.Generator.manual_seed accepts


def _f(default, lo=None, hi=None, help="", lo_open=False, **kw):
    """A field with its bounds: the one place the CLI, the server and the engine take them from."""
    return field(default=default, metadata={"help": help, "bounds": (lo, hi, lo_open)}, **kw)


@dataclass
class SamplingParams:
    """Every sampling setting, validated here once (the CLI's `generate`/`chat`, the server and the
    engine all build one). Bounds are what the engine computes safely; docs/serve.md lists them."""
    max_new_tokens: int = _f(128, 0, None, "tokens to generate at most")
    temperature: float = _f(0.0, 0.0, 2.0, "0 (or < 1e-5) = greedy")
    top_k: int = _f(0, 0, 2 ** 31 - 1, "keep the k most likely tokens; 0 = off")
    top_p: float = _f(1.0, 0.0, 1.0, "nucleus mass; 1 = off", lo_open=True)
    seed: int | None = _f(None, SEED_MIN, SEED_MAX, "per-request generator: same seed, same output, whatever the batch")
    min_p: float = _f(0.0, 0.0, 1.0, "drop tokens below min_p * max prob; 0 = off")
    repetition_penalty: float = _f(1.0, 0.01, 100.0, "CTRL penalty on seen tokens; 1 = off")
    presence_penalty: float = _f(0.0, -2.0, 2.0)
    frequency_penalty: float = _f(0.0, -2.0, 2.0)
    no_repeat_ngram_size: int = _f(0, 0, 1024, "ban repeating n-grams of this size; 0 = off")
    stop: tuple[str, ...] = field(default=(), metadata={"help": "stop strings (not in the output), e.g. stop='[\"\\n\\n\"]'"})
    stop_token_ids: tuple[int, ...] = field(default=(), metadata={"help": "stop tokens besides EOS (not in the output)"})
    ignore_eos: bool = False
    logprobs: int | None = _f(None, 0, 20, "None = off; k = chosen token's logprob plus the k best alternatives")
    n: int = _f(1, 1, 16, "parallel samples of one prompt (share the prompt's KV blocks)")
    extra: dict = field(default_factory=dict, repr=False, metadata={"hidden": True})

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(x, str) and x for x in self.stop):
            raise SamplingError("stop", f"stop strings must be non-empty strings, got {self.stop!r}")
        self.stop = tuple(self.stop)
        if not isinstance(self.stop_token_ids, (list, tuple)) or not all(
                isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2 ** 31 for t in self.stop_token_ids):
            raise SamplingError("stop_token_ids", f"stop_token_ids must be token ids, got {self.stop_token_ids!r}")
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        for f in fields(self):
            if "bounds" in f.metadata:
                check_bound(f.name, getattr(self, f.name), *f.metadata["bounds"], kind=_kind(f.type))

    @property
    def greedy(self) -> bool:
        # below 1e-5 (vLLM's epsilon) sampling is argmax in all but name, and in float32 a
        # temperature like 5e-324 rounds to 0: max-logit / 0 would be NaN
        return self.temperature < GREEDY_BELOW


def _kind(annotation) -> type:
    return int if str(annotation).startswith("int") else float


def check_bound(name: str, v, lo, hi, lo_open: bool = False, kind: type = float) -> None:
    """Raise SamplingError unless v is a finite number of `kind` in [lo, hi] ((lo, hi] if lo_open);
    None passes (= off)."""
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)) \
            or not math.isfinite(v):
        raise SamplingError(name, f"{name} must be a{'n integer' if kind is int else ' finite number'}, got {v!r}")
    if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and v > hi):
        rng = f"{'(' if lo_open else '['}{lo}, {'inf' if hi is None else hi}]"
        raise SamplingError(name, f"{name} must be in {rng}, got {v}")


def bounds(name: str) -> tuple:
    """(lo, hi, lo_open) of a SamplingParams field."""
    return next(f.metadata["bounds"] for f in fields(SamplingParams) if f.name == name)


TOP_P_PREFIXES = (256, 4096)  # nucleus candidates tried before a full sort (see `top_p_keep`)


def top_p_keep(probs: torch.Tensor, top_p: float, prefixes: tuple[int, ...] = TOP_P_PREFIXES) -> torch.Tensor:
    """The nucleus (Holtzman et al. 2020) of each row of probs (R, V) as a bool mask.

    Rule: sort a row's probabilities descending (p_1 >= p_2 >= ...), let S_i = p_1 + ... + p_{i-1}
    (the mass before token i; accumulated in float64 by torch's cumsum, so S is non-decreasing);
    the first c = max(1, #{i: S_i < top_p}) tokens reach top_p; keep every token with
    prob >= p_c. Keeping by value makes ties at the boundary all stay, so the set does not depend
    on how a sort orders equal values.

    Why a prefix: sorting 49,152 probabilities costs ~8 ms a row, while the nucleus is usually a few
    dozen tokens. Take the K largest (topk, ~0.1 ms); when their mass S_{K+1} reaches top_p, every
    later token has S_i >= S_{K+1} >= top_p, so c <= K and p_c is in the prefix: the same mask as a
    full sort, bit for bit. Rows whose prefix holds too little mass try the next K, then sort fully
    (`prefixes=()` is the full-sort reference the tests compare with)."""
    R, V = probs.shape
    thresh = torch.empty(R, 1, dtype=probs.dtype)
    todo = torch.arange(R)
    for k in [k for k in prefixes if k < V] + [V]:
        if todo.numel() == 0:
            break
        sub = probs[todo]
        vals = torch.topk(sub, k, dim=-1).values if k < V else torch.sort(sub, dim=-1, descending=True).values
        cum = vals.cumsum(-1)
        done = cum[:, -1] >= top_p if k < V else torch.ones(len(todo), dtype=torch.bool)
        before = torch.cat([torch.zeros_like(cum[:, :1]), cum[:, :-1]], -1)  # S_i
        c = (before < top_p).sum(-1).clamp(1, k)
        thresh[todo[done]] = vals[done].gather(1, (c[done] - 1)[:, None])
        todo = todo[~done]
    return probs >= thresh


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus / min-p set to -inf. logits: (..., V)."""
    if top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        probs = logits.softmax(-1)
        keep = top_p_keep(probs.reshape(-1, probs.shape[-1]), top_p).view(probs.shape)
        logits = logits.masked_fill(~keep, float("-inf"))
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
           context: list[int] | None = None, n_prompt: int = 0, processor=None) -> int:
    """One row (V,) of raw logits -> the next token id, after penalties, the request's logits
    processor (processor(generated ids, logits) -> logits; constrained decoding), temperature and
    truncation."""
    logits = logits.float()
    if needs_context(p):
        logits = apply_penalties(logits, p, context or [], n_prompt)
    if processor is not None:
        logits = processor(list((context or [])[n_prompt:]), logits)
    if p.greedy:
        return int(logits.argmax())
    # shift by the max before dividing: a tiny temperature then gives -inf/0, never inf - inf = NaN
    logits = filter_logits((logits - logits.max()) / p.temperature, p.top_k, p.top_p, p.min_p)
    probs = logits.softmax(-1)
    if not math.isfinite(total := float(probs.sum())) or not total > 0:  # a NaN anywhere makes the sum NaN
        raise SamplingError("logits", "the next-token distribution is not finite (NaN/inf logits)")
    return draw(probs, generator)


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> int:
    """One token from probs (V,), as torch.multinomial. After truncation (top-k/p, min-p) only a few
    tokens can be drawn: multinomial over those alone gives the same distribution in ~0.08 ms
    instead of ~1 ms over the whole vocabulary (it draws differently from the same seed, so a
    seed's tokens changed once, when this went in)."""
    idx = probs.nonzero().squeeze(-1)
    if 4 * idx.numel() < probs.numel():
        return int(idx[torch.multinomial(probs[idx], 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


def probs_for(logits: torch.Tensor, p: SamplingParams, context: list[int] | None = None,
              n_prompt: int = 0) -> torch.Tensor:
    """The distribution `choose` draws from, as probabilities (V,): one-hot at the argmax when
    greedy (speculative decoding verifies drafts against it)."""
    logits = logits.float()
    if needs_context(p):
        logits = apply_penalties(logits, p, context or [], n_prompt)
    if p.greedy:
        return torch.zeros_like(logits).index_fill_(0, logits.argmax().view(1), 1.0)
    probs = filter_logits((logits - logits.max()) / p.temperature, p.top_k, p.top_p, p.min_p).softmax(-1)
    if not bool(torch.isfinite(probs).all()) or not float(probs.sum()) > 0:
        raise SamplingError("logits", "the next-token distribution is not finite (NaN/inf logits)")
    return probs


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
    if p.greedy:
        return logits.argmax(-1)
    logits = filter_logits(logits.float() / p.temperature, p.top_k, p.top_p, p.min_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
