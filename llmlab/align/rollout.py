"""Batched sampling for RL rollouts: the one decoding loop (`llmlab.infer.generate.generate_batch`)
with temperature + top-p, all rows drawn from one seeded generator.

Prompts are left-padded so every row's next token is at the same column; the attention mask hides
the padding and positions count real tokens only. After a row emits EOS its later tokens are
padding (mask 0). The EOS token itself stays in the completion mask, so the policy learns to stop.
"""
from __future__ import annotations

import torch

from llmlab.infer.generate import Batch, generate_batch, pad_left  # noqa: F401  (re-exported)
from llmlab.infer.sampling import SamplingParams

Rollout = Batch  # prompt/completion ids and masks, `.ids`, `.attention_mask`, `.completions()`


def sample(model, prompts: list[list[int]], max_new_tokens: int, eos_id: int | None, pad_id: int,
           temperature: float = 1.0, top_p: float = 1.0, generator: torch.Generator | None = None) -> Rollout:
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    return generate_batch(model, prompts, params, stop_ids=[] if eos_id is None else [eos_id], pad_id=pad_id,
                          generator=generator)
