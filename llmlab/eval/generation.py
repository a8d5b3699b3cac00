"""Greedy decoding for generative tasks, with stop strings.

`greedy_generate_many` runs a task's prompts together through the continuous-batching engine
(`llmlab.infer.engine.Engine`): its greedy outputs are batch-invariant (a request's tokens do not
depend on what else runs; left-padded batches would change logits by ~1e-5, enough to flip a
near-tie argmax), so batching changes the speed, not the answers. A request is cancelled as soon
as its text hits a stop string. Wrapped models (adapters, soft prompts) fall back to
`greedy_generate`, one prompt at a time through the one decoding loop. Prompts that do not fit the context window together with `max_new_tokens` are cut on the
left, and the caller is told.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from llmlab.errors import UserError
from llmlab.infer.generate import generate_batch
from llmlab.infer.sampling import SamplingParams


@dataclass
class Generation:
    text: str
    tokens: int
    truncated: bool  # the prompt was cut on the left to fit the window


def _stop_at(text: str, stops: Sequence[str]) -> int | None:
    """First stop-string position after any leading whitespace (a reply may open with "\n")."""
    start = len(text) - len(text.lstrip())
    cut = [text.find(s, start) for s in stops if s and text.find(s, start) >= 0]
    return min(cut) if cut else None


def _fit(model, prompt_ids: list[int], max_new_tokens: int, max_length: int | None) -> tuple[list[int], bool]:
    if not prompt_ids:
        raise UserError("empty prompt")
    ctx = min(max_length or model.config.max_position_embeddings, model.config.max_position_embeddings)
    if max_new_tokens >= ctx:
        raise UserError(f"max_new_tokens={max_new_tokens} does not fit the {ctx}-token context window")
    keep = ctx - max_new_tokens
    return prompt_ids[-keep:], len(prompt_ids) > keep


def greedy_generate_many(model, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int,
                         stop: Sequence[str] = (), max_length: int | None = None,
                         max_num_seqs: int = 16) -> list[Generation]:
    """greedy_generate for every prompt, run concurrently through the engine (same rules)."""
    from llmlab.infer.engine import Engine

    from llmlab.model.transformer import Transformer

    fitted = [_fit(model, p, max_new_tokens, max_length) for p in prompts]
    if not fitted:
        return []
    if type(model) is not Transformer:  # wrappers (adapters, soft prompts) run their own forward
        return [greedy_generate(model, tokenizer, p, max_new_tokens, stop, max_length) for p in prompts]
    try:
        bs = 16
        longest = max(len(p) for p, _ in fitted) + max_new_tokens
        blocks = max(max_num_seqs * 256 // bs, -(-longest // bs) + 1)
        # the engine sees ids only (texts are decoded here, stop strings checked here)
        engine = Engine(model, None, max_num_seqs=max_num_seqs, num_blocks=blocks, block_size=bs)
    except (UserError, AttributeError, TypeError, NotImplementedError):  # a model the engine does not run
        return [greedy_generate(model, tokenizer, p, max_new_tokens, stop, max_length) for p in prompts]
    eos = tokenizer.eos_id
    params = SamplingParams(max_new_tokens=max_new_tokens, stop_token_ids=() if eos is None else (eos,))
    rids = [engine.add_request(p, params) for p, _ in fitted]
    ids: dict[str, list[int]] = {r: [] for r in rids}
    cut: dict[str, int | None] = {}
    while engine.has_work():
        for o in engine.step():
            if o.token_id is None or o.request_id in cut:
                continue
            ids[o.request_id].append(o.token_id)
            at = _stop_at(tokenizer.decode(ids[o.request_id]), stop) if stop else None
            if at is not None:
                cut[o.request_id] = at
                engine.cancel(o.request_id)
    out = []
    for r, (_, truncated) in zip(rids, fitted):
        text = tokenizer.decode(ids[r])
        out.append(Generation(text[:cut[r]] if cut.get(r) is not None else text, len(ids[r]), truncated))
    return out


def greedy_generate(model, tokenizer, prompt_ids: list[int], max_new_tokens: int,
                    stop: Sequence[str] = (), max_length: int | None = None) -> Generation:
    """Argmax decoding until EOS, a stop string (excluded from the text; stop strings in
    leading whitespace do not count) or max_new_tokens, through the one decoding loop
    (`llmlab.infer.generate.generate_batch`, batch 1, unmasked)."""
    prompt_ids, truncated = _fit(model, prompt_ids, max_new_tokens, max_length)
    eos = tokenizer.eos_id
    cut: list[int | None] = [None]

    def hit_stop(_row: int, ids: list[int]) -> bool:
        if ids[-1] == eos:
            return False
        cut[0] = _stop_at(tokenizer.decode(ids), stop)
        return cut[0] is not None

    out = generate_batch(model, [prompt_ids], SamplingParams(max_new_tokens=max_new_tokens),
                         stop_ids=[] if eos is None else [eos], stop_when=hit_stop if stop else None, masked=False)
    ids = out.completions(keep_stop=False)[0]
    text = tokenizer.decode(ids)
    return Generation(text[:cut[0]] if cut[0] is not None else text, len(ids), truncated)
