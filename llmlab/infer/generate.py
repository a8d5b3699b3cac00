"""The one decoding loop: prefill the prompts once, then one token per step for every row.

Two front ends share `_decode_steps` (token choice, penalties, logits processors, stop tokens,
the per-step callback):

- `generate_ids` / `stream_text`: one sequence, streamed token by token (the `generate` and `chat`
  verbs, the batch-1 benchmark). A plain `Transformer` runs the lean contiguous-cache forward
  (`llmlab.infer.runner.ContiguousDecoder`); wrappers (PEFT prefixes, soft prompts) their own.
- `generate_with_forward`: the same loop over a caller's forward (a vision-language model fed image
  embeddings: `llmlab.multimodal.llava`).
- `generate_batch`: many prompts at once, left-padded with an attention mask, over any model with
  the `Transformer` calling convention (LoRA, reward trunks, ...). It returns everything the
  training-time callers need: ids, the completion mask for RL (1 up to and including the stop
  token), per-token log-probs and texts. Used by alignment rollouts and evaluation, SFT and
  generative eval. Serving many concurrent requests is `llmlab.infer.engine.Engine` (continuous
  batching over paged KV; Self-Instruct uses it through `engine_generator`).

Token choice follows `llmlab.infer.sampling`: penalties, then the request's logits processor,
then temperature and truncation (`filter_logits`), then a draw (or argmax when temperature is 0).

Logits processor hook (constrained decoding, e.g. JSON / regex grammars): a callable
`processor(generated: list[int], logits: Tensor[V]) -> Tensor[V]` given the row's generated ids
so far and its raw (penalised) float logits; return logits with disallowed tokens at -inf. Pass
one per prompt (`logits_processors=[p0, None, ...]`, None = unconstrained) to `generate_batch`,
or `logits_processor=p` to `generate_ids` / `stream_text`. It runs before temperature/top-k/top-p,
so a constraint holds under every sampling setting; a processor that leaves no finite logit is a
bug in the processor (the draw then fails with a clear torch error).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from llmlab.errors import UserError
from llmlab.infer.detok import TextStream, Utf8Stream  # noqa: F401  (Utf8Stream is re-exported)
from llmlab.infer.runner import ContiguousDecoder
from llmlab.infer.sampling import SamplingParams, apply_penalties, needs_context, sample_next
from llmlab.model.kv_cache import KVCache
from llmlab.model.transformer import Transformer

LogitsProcessor = Callable[[list[int], torch.Tensor], torch.Tensor]
# on_step(step, logits (B, V) as the model returned them, fed ids (None at step 0 = the prompts,
# else the B tokens fed this step), alive rows before this step's choice)
StepCallback = Callable[[int, torch.Tensor, "list[int] | None", "list[bool]"], None]


def pad_left(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to one width -> (ids (B, W), attention mask (B, W)); every row's next token is
    at the same column, positions count real tokens only (the model derives them from the mask)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


class CacheForward:
    """Left-padded prompts over a plain KV cache, any model with the Transformer calling convention.
    Call with None to prefill (-> logits (B, V) at each prompt's last token), then with the B
    tokens of each step. masked=False runs an unpadded batch without the attention mask (the
    plain causal kernels; only valid when all prompts have the same length)."""

    def __init__(self, model, prompts: list[list[int]], pad_id: int, new_tokens: int, masked: bool = True):
        self.model, self.device = model, next(model.parameters()).device
        self.ids, mask = (x.to(self.device) for x in pad_left(prompts, pad_id))
        if not masked and not bool(mask.all()):
            raise ValueError("masked=False needs prompts of one length")
        self.prompt_mask = mask
        self.mask = mask if masked else None  # grows by one column per step
        self.cache = KVCache.for_model(model, len(prompts), self.ids.shape[1] + new_tokens)

    def __call__(self, fed: list[int] | None) -> torch.Tensor:
        if fed is None:
            return self.model(self.ids, cache=self.cache, attention_mask=self.mask, last_only=True)[:, -1]
        step = torch.tensor(fed, dtype=torch.long, device=self.device).unsqueeze(1)
        if self.mask is not None:
            self.mask = torch.cat([self.mask, self.mask.new_ones(len(fed), 1)], 1)
        return self.model(step, cache=self.cache, attention_mask=self.mask)[:, -1]


def _decode_steps(forward: Callable[[list[int] | None], torch.Tensor], prompts: list[list[int]],
                  params: SamplingParams, budget: int, stop_ids: set[int], pad_id: int,
                  generator: torch.Generator | None, processors: Sequence[LogitsProcessor | None] | None,
                  on_step: StepCallback | None, stop_when: Callable[[int, list[int]], bool] | None,
                  logprobs: bool, argmax: Callable[[], int | None] | None = None
                  ) -> Iterator[tuple[list[int], list[bool], list[float] | None]]:
    """Yield, per step, (chosen token of every row, which rows were alive for it, its log-prob
    under the raw logits or None). A row dies on a stop token (yielded) or when stop_when says
    so; dead rows are fed pad_id. Ends when every row is dead or after `budget` steps.
    argmax (one row): the last forward's logits' argmax where the forward already took it (the C
    head's, `ContiguousDecoder.last_argmax`), else None; a greedy step with nothing to score uses it
    instead of torch's argmax over the vocabulary."""
    B = len(prompts)
    alive = [True] * B
    outs: list[list[int]] = [[] for _ in range(B)]
    penalise = needs_context(params)
    fed: list[int] | None = None
    logits = forward(fed)
    for step in range(budget):
        if on_step is not None:
            on_step(step, logits, fed, list(alive))
        scored = logits
        if penalise or processors:
            scored = logits.float().clone()  # the raw logits stay raw (log-probs, callbacks)
            for i in range(B):
                if not alive[i]:
                    continue
                if penalise:
                    scored[i] = apply_penalties(scored[i], params, prompts[i] + outs[i], len(prompts[i]))
                if processors and processors[i] is not None:
                    scored[i] = processors[i](outs[i], scored[i])
        fast = argmax() if argmax is not None and B == 1 and params.greedy and scored is logits else None
        nxt = [fast] if fast is not None else sample_next(scored, params, generator).tolist()
        lps = None
        if logprobs:
            lps = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(nxt, device=logits.device)
                                                                  .unsqueeze(1)).squeeze(1).tolist()
        was = list(alive)
        for i, t in enumerate(nxt):
            if alive[i]:
                outs[i].append(t)
                if t in stop_ids or (stop_when is not None and stop_when(i, outs[i])):
                    alive[i] = False
        yield nxt, was, lps
        if not any(alive) or step + 1 == budget:
            return
        fed = [t if a else pad_id for t, a in zip(nxt, was)]
        logits = forward(fed)


@dataclass
class Batch:
    """What `generate_batch` returns. completion_ids is right-padded with pad_id after each row's
    end; completion_mask is 1 up to and including the stop token (RL: the policy learns to stop)."""
    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P)
    completion_ids: torch.Tensor  # (B, T)
    completion_mask: torch.Tensor  # (B, T)
    logprobs: torch.Tensor | None  # (B, T) log pi(token) under the raw logits (temperature 1), 0 where masked
    stopped: list[bool]  # the row ended on a stop token (else on the budget or stop_when)
    stop_ids: frozenset[int] = frozenset()

    @property
    def ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], 1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], 1)

    def completions(self, keep_stop: bool = True) -> list[list[int]]:
        """Each row's generated ids (with the stop token, unless keep_stop=False)."""
        rows = [row[m.bool()].tolist() for row, m in zip(self.completion_ids, self.completion_mask)]
        if not keep_stop:
            rows = [r[:-1] if s and r else r for r, s in zip(rows, self.stopped)]
        return rows

    def texts(self, tok, skip_special: bool = False) -> list[str]:
        """Decoded completions without their stop token."""
        if skip_special:
            return [tok.decode(c, skip_special=True) for c in self.completions(keep_stop=False)]
        return [tok.decode(c) for c in self.completions(keep_stop=False)]


@torch.no_grad()
def generate_batch(model, prompts: list[list[int]], params: SamplingParams, *, stop_ids: Sequence[int] = (),
                   pad_id: int = 0, generator: torch.Generator | None = None,
                   logits_processors: Sequence[LogitsProcessor | None] | None = None,
                   on_step: StepCallback | None = None, stop_when: Callable[[int, list[int]], bool] | None = None,
                   logprobs: bool = False, masked: bool = True) -> Batch:
    """Decode all prompts together (left-padded, one forward per step) -> `Batch`.

    params: temperature/top-k/top-p/min-p/penalties and max_new_tokens (clipped to the context
    window); stop strings are not read here (callers that need them pass `stop_when`). Sampling
    draws all rows from one `generator` (seeded rollouts are reproducible for a given batch).
    `on_step` sees each step's raw logits before the choice (e.g. a reference model's KL along the
    path, `llmlab.align.evaluate.decode`); `stop_when(row, generated)` ends a row after a token.
    The model keeps its train/eval mode; it runs in eval mode meanwhile. no_grad, not
    inference_mode: the returned ids feed training forwards."""
    if not prompts or not all(prompts):
        raise UserError("generate_batch needs non-empty prompts")
    if logits_processors is not None and len(logits_processors) != len(prompts):
        raise ValueError("logits_processors needs one entry (or None) per prompt")
    ctx, P = model.config.max_position_embeddings, max(len(p) for p in prompts)
    budget = min(params.max_new_tokens, ctx - P)
    if params.max_new_tokens > 0 and budget <= 0:
        raise UserError(f"prompts of {P} tokens leave no room to generate in the {ctx}-token context window")
    budget = max(budget, 0)
    was = model.training
    model.eval()
    fwd = CacheForward(model, prompts, pad_id, budget, masked)
    stops = set(stop_ids) | set(params.stop_token_ids)
    cols, alive_cols, lp_cols = [], [], []
    try:
        if budget:
            for nxt, alive, lps in _decode_steps(fwd, prompts, params, budget, stops, pad_id, generator,
                                                 logits_processors, on_step, stop_when, logprobs):
                cols.append([t if a else pad_id for t, a in zip(nxt, alive)])
                alive_cols.append(alive)
                lp_cols.append([x if a else 0.0 for x, a in zip(lps, alive)] if lps is not None else None)
    finally:
        model.train(was)
    B, T, dev = len(prompts), len(cols), fwd.device
    out = torch.tensor(cols, dtype=torch.long, device=dev).reshape(T, B).T
    mask = torch.tensor(alive_cols, dtype=torch.long, device=dev).reshape(T, B).T
    lp = torch.tensor(lp_cols, device=dev).reshape(T, B).T if logprobs else None
    stopped = [any(int(t) in stops for t in row[m.bool()][-1:]) for row, m in zip(out, mask)]
    return Batch(fwd.ids, fwd.prompt_mask, out, mask, lp,
                 stopped, frozenset(stops))


@torch.no_grad()
def generate_with_forward(forward: Callable[[list[int] | None], torch.Tensor], prompts: list[list[int]],
                          params: SamplingParams, stop_ids: Sequence[int] = (), pad_id: int = 0,
                          generator: torch.Generator | None = None) -> list[list[int]]:
    """The one loop over a caller's forward, for models fed more than token ids (a vision-language
    model's image embeddings): forward(None) -> logits (B, V) after each row's prompt, forward(fed)
    -> logits after the B fed tokens. prompts: each row's token ids, for penalties ([] if none).
    Returns each row's generated ids, without its stop token; at most params.max_new_tokens."""
    stops = set(stop_ids) | set(params.stop_token_ids)
    outs: list[list[int]] = [[] for _ in prompts]
    if params.max_new_tokens <= 0:
        return outs
    for nxt, alive, _ in _decode_steps(forward, prompts, params, params.max_new_tokens, stops, pad_id, generator,
                                       None, None, None, False):
        for out, t, a in zip(outs, nxt, alive):
            if a and t not in stops:
                out.append(t)
    return outs


@torch.inference_mode()
def generate_ids(model, prompt_ids: list[int], params: SamplingParams,
                 stop_ids: set[int] | None = None, logits_processor: LogitsProcessor | None = None) -> Iterator[int]:
    """Yield new token ids one by one (a stop token, if hit, is not yielded).

    Applies every processor in `params` (penalties, no-repeat n-gram, temperature, top-k/p,
    min-p) and the optional `logits_processor` hook; stop tokens are `stop_ids` plus
    params.stop_token_ids. Stop strings need text: see `stream_text`."""
    ctx = model.config.max_position_embeddings
    if not prompt_ids:
        raise UserError("empty prompt")
    if len(prompt_ids) >= ctx:
        raise UserError(f"prompt is {len(prompt_ids)} tokens; the context window is {ctx}")
    budget = min(params.max_new_tokens, ctx - len(prompt_ids))
    if budget <= 0:
        return
    stops = set(stop_ids or ()) | set(params.stop_token_ids)
    device = next(model.parameters()).device
    gen = None
    if params.seed is not None:
        gen = torch.Generator(device=device).manual_seed(params.seed)
    argmax = None  # greedy steps: the C head's argmax where the step took it (no torch argmax over the logits)
    if type(model) is Transformer and not model.config.beyond_llama_gpt():  # the lean forward (llmlab.infer.runner)
        dec = ContiguousDecoder(model, len(prompt_ids) + budget)
        argmax = lambda: dec.last_argmax  # noqa: E731

        def forward(fed):
            return dec.forward(list(prompt_ids) if fed is None else fed).unsqueeze(0)
    elif hasattr(model, "stepper"):  # encoder-decoder: encode the prompt once, decode with a cache
        forward = model.stepper(list(prompt_ids), budget)
    else:  # other variants (prefix decoder, ALiBi, ...) and wrappers (PEFT prefixes, ...): their forward + a KV cache
        forward = CacheForward(model, [list(prompt_ids)], 0, budget, masked=False)
    procs = [logits_processor] if logits_processor is not None else None
    for nxt, _, _ in _decode_steps(forward, [list(prompt_ids)], params, budget, stops, 0, gen, procs,
                                   None, None, False, argmax):
        if nxt[0] in stops:
            return
        yield nxt[0]


def stream_text(model, tokenizer, prompt_ids: list[int], params: SamplingParams,
                logits_processor: LogitsProcessor | None = None) -> Iterator[str]:
    """Yield decoded text pieces as tokens arrive; stops at EOS, params.stop_token_ids or a stop
    string (which is not part of the output). Never yields half a UTF-8 character."""
    stop = {i for i in (tokenizer.eos_id,) if i is not None and not params.ignore_eos}
    text = TextStream(params.stop)
    for tid in generate_ids(model, prompt_ids, params, stop, logits_processor):
        piece, hit = text.push(tokenizer.decode_bytes([tid]))
        if piece:
            yield piece
        if hit:
            return
    tail = text.finish()
    if tail:
        yield tail
