"""Greedy decoding for generative tasks: one prompt at a time with a KV cache, stop strings.

Batch 1 keeps generations independent of what else is being evaluated (left-padded batches
change logits by ~1e-5, enough to flip a near-tie argmax). Prompts that do not fit the context
window together with `max_new_tokens` are cut on the left, and the caller is told.
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


def greedy_generate(model, tokenizer, prompt_ids: list[int], max_new_tokens: int,
                    stop: Sequence[str] = (), max_length: int | None = None) -> Generation:
    """Argmax decoding until EOS, a stop string (excluded from the text; stop strings in
    leading whitespace do not count) or max_new_tokens, through the one decoding loop
    (`llmlab.infer.generate.generate_batch`, batch 1, unmasked)."""
    if not prompt_ids:
        raise UserError("empty prompt")
    ctx = min(max_length or model.config.max_position_embeddings, model.config.max_position_embeddings)
    if max_new_tokens >= ctx:
        raise UserError(f"max_new_tokens={max_new_tokens} does not fit the {ctx}-token context window")
    keep = ctx - max_new_tokens
    truncated = len(prompt_ids) > keep
    prompt_ids = prompt_ids[-keep:]
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
