"""Packing short SFT examples into full rows, with attention kept inside each example.

Packing (as in T5 / TRL's `packing=True`) puts several examples end to end in one row of
`max_length` tokens instead of padding each one, so no compute is spent on padding. Done
naively, a token could attend to the previous, unrelated example; here it cannot:

- position ids restart at 0 at every example (so RoPE sees the same positions as alone), and
- attention is block-diagonal causal: query i sees key j iff j <= i and both belong to the same
  example (a "per-document causal mask", the varlen/`cu_seqlens` idea of FlashAttention-2 and
  TRL's `padding_free`, written as a dense (B, 1, T, T) boolean mask for SDPA).

With both, every token's logits equal those of its example run alone (tested to 1e-5), so the
loss of a packed batch equals the loss of the examples run one by one.

Rows are filled by first-fit decreasing bin packing (longest examples first, each into the first
row with room), which wastes little space and is deterministic.
"""
from __future__ import annotations

import torch

from llmlab.model.transformer import Transformer


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: -> rows, each a list of example indices whose lengths sum <= capacity."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(capacity - n)
    return rows


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) example index per token (-1 = padding) -> (B, 1, T, T) boolean keep-mask.

    Causal within an example, nothing across examples; a padding query sees only itself, so no
    attention row is empty (an all-False row would give NaN through the softmax).
    """
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    same = doc_ids.unsqueeze(2) == doc_ids.unsqueeze(1)
    eye = torch.eye(T, dtype=torch.bool, device=doc_ids.device)
    return ((same & causal) | eye).unsqueeze(1)


def _mask_passthrough(attention_mask: torch.Tensor, past: int, T: int) -> torch.Tensor:
    if attention_mask.dim() == 4:
        return attention_mask
    return Transformer._padding_mask(attention_mask, past, T)


def allow_block_masks(model: Transformer) -> Transformer:
    """Let `model.forward(attention_mask=...)` take a ready (B, 1, T, S) boolean mask as is.

    `Transformer.forward` builds its mask from a (B, S) padding mask; for packed rows we need the
    block-diagonal one above. This swaps the builder on this one instance (2-D masks behave as
    before). Pass `position_ids` too: positions are derived from a 2-D mask only.
    """
    model._padding_mask = _mask_passthrough
    return model
