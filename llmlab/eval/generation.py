"""Greedy decoding for generative tasks: one prompt at a time with a KV cache, stop strings.

Batch 1 keeps generations independent of what else is being evaluated (left-padded batches
change logits by ~1e-5, enough to flip a near-tie argmax). Prompts that do not fit the context
window together with `max_new_tokens` are cut on the left, and the caller is told.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from llmlab.errors import UserError
from llmlab.model.kv_cache import KVCache


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


@torch.inference_mode()
def greedy_generate(model, tokenizer, prompt_ids: list[int], max_new_tokens: int,
                    stop: Sequence[str] = (), max_length: int | None = None) -> Generation:
    """Argmax decoding until EOS, a stop string (excluded from the text; stop strings in
    leading whitespace do not count) or max_new_tokens."""
    if not prompt_ids:
        raise UserError("empty prompt")
    ctx = min(max_length or model.config.max_position_embeddings, model.config.max_position_embeddings)
    if max_new_tokens >= ctx:
        raise UserError(f"max_new_tokens={max_new_tokens} does not fit the {ctx}-token context window")
    keep = ctx - max_new_tokens
    truncated = len(prompt_ids) > keep
    prompt_ids = prompt_ids[-keep:]
    device = next(model.parameters()).device
    cache = KVCache.for_model(model, 1, len(prompt_ids) + max_new_tokens)
    logits = model(torch.tensor([prompt_ids], device=device), cache=cache, last_only=True)[0, -1]
    out: list[int] = []
    eos = tokenizer.eos_id
    text = ""
    for step in range(max_new_tokens):
        nxt = int(logits.argmax())
        if nxt == eos:
            break
        out.append(nxt)
        if stop:
            text = tokenizer.decode(out)
            cut = _stop_at(text, stop)
            if cut is not None:
                return Generation(text[:cut], len(out), truncated)
        if step + 1 < max_new_tokens:
            logits = model(torch.tensor([[nxt]], device=device), cache=cache)[0, -1]
    return Generation(tokenizer.decode(out), len(out), truncated)
