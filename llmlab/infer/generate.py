"""Single-sequence decoding with a contiguous KV cache: prefill the prompt once, then one token
per step. This is the low-overhead batch-1 path (the `generate` verb, the batch-1 benchmark);
many concurrent requests go through `llmlab.infer.engine.Engine` instead.
"""
from __future__ import annotations

from typing import Iterator

import torch

from llmlab.errors import UserError
from llmlab.infer.detok import TextStream, Utf8Stream  # noqa: F401  (Utf8Stream is re-exported)
from llmlab.infer.runner import ContiguousDecoder
from llmlab.infer.sampling import SamplingParams, choose, needs_context
from llmlab.model.kv_cache import KVCache
from llmlab.model.transformer import Transformer


@torch.inference_mode()
def generate_ids(model, prompt_ids: list[int], params: SamplingParams,
                 stop_ids: set[int] | None = None) -> Iterator[int]:
    """Yield new token ids one by one (a stop token, if hit, is not yielded).

    Applies every processor in `params` (penalties, no-repeat n-gram, temperature, top-k/p,
    min-p); stop tokens are `stop_ids` plus params.stop_token_ids. Stop strings need text:
    see `stream_text`."""
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
    context = list(prompt_ids) if needs_context(params) else None
    if type(model) is Transformer:  # the lean inference forward (llmlab.infer.runner)
        dec = ContiguousDecoder(model, len(prompt_ids) + budget)
        forward = dec.forward
    else:  # wrappers (PEFT prefixes, soft prompts, ...) run their own forward
        cache = KVCache.for_model(model, 1, len(prompt_ids) + budget)

        def forward(ids):
            return model(torch.tensor([ids], device=device), cache=cache, last_only=True)[0, -1]
    logits = forward(prompt_ids)
    for step in range(budget):
        nxt = choose(logits, params, gen, context, len(prompt_ids))
        if nxt in stops:
            return
        yield nxt
        if context is not None:
            context.append(nxt)
        if step + 1 < budget:
            logits = forward([nxt])


def stream_text(model, tokenizer, prompt_ids: list[int], params: SamplingParams) -> Iterator[str]:
    """Yield decoded text pieces as tokens arrive; stops at EOS, params.stop_token_ids or a stop
    string (which is not part of the output). Never yields half a UTF-8 character."""
    stop = {i for i in (tokenizer.eos_id,) if i is not None and not params.ignore_eos}
    text = TextStream(params.stop)
    for tid in generate_ids(model, prompt_ids, params, stop):
        piece, hit = text.push(tokenizer.decode_bytes([tid]))
        if piece:
            yield piece
        if hit:
            return
    tail = text.finish()
    if tail:
        yield tail
