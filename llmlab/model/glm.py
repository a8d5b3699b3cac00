"""GLM's autoregressive blank infilling with 2-D positions (Du et al. 2022, "GLM: General Language
Model Pretraining with Autoregressive Blank Infilling", sec. 2.1-2.2, Figure 2).

Spans of the text are blanked out. Part A is the text with each span replaced by one [MASK]; Part B
holds the spans in a random order, each as [START] + its tokens, and is predicted left to right,
each span's tokens followed by [END]:

    x = x1 x2 x3 x4 x5 x6, spans (x3), (x5 x6), order (x5 x6), (x3):
    input     x1 x2 [M] x4 [M] | [S] x5 x6 [S] x3
    target     -  -  -   -  -  |  x5 x6 [E] x3 [E]
    position1  1  2  3   4  5  |  5  5  5   3  3     (Part B: the position of its span's [MASK])
    position2  0  0  0   0  0  |  1  2  3   1  2     (Part A: 0; Part B: the place inside the span)

Part A attends to all of Part A (bidirectional) and to nothing in Part B; Part B attends to Part A
and causally to Part B. The two position ids each have their own learned embedding, added to the
token embedding (`TwoDPositions`; the model runs with position="none"). Positions count from 0
here (the paper's figure counts from 1).
"""
from __future__ import annotations

import torch
from torch import nn

from llmlab.errors import UserError


def blank_infilling(tokens: list[int], spans: list[tuple[int, int]], order: list[int], mask_id: int,
                    start_id: int, end_id: int) -> dict[str, torch.Tensor]:
    """tokens, spans [(start, end)) sorted and disjoint, `order` a permutation of the spans (Part B's
    order) -> input_ids (L,), labels (L,) (-100 in Part A), position_ids (2, L), keep mask (L, L),
    len_a (Part A's length)."""
    if sorted(order) != list(range(len(spans))):
        raise UserError(f"blank infilling: order {order} is not a permutation of the {len(spans)} spans")
    last = 0
    for s, e in spans:
        if not last <= s < e <= len(tokens):
            raise UserError(f"blank infilling: spans must be sorted, disjoint, non-empty and inside the text: {spans}")
        last = e
    part_a, mask_pos, cursor = [], [], 0
    for s, e in spans:
        part_a += tokens[cursor:s]
        mask_pos.append(len(part_a))
        part_a.append(mask_id)
        cursor = e
    part_a += tokens[cursor:]
    ids, labels = list(part_a), [-100] * len(part_a)
    pos1, pos2 = list(range(len(part_a))), [0] * len(part_a)
    for k in order:
        s, e = spans[k]
        span = tokens[s:e]
        ids += [start_id] + span
        labels += span + [end_id]
        pos1 += [mask_pos[k]] * (len(span) + 1)
        pos2 += list(range(1, len(span) + 2))
    n, len_a = len(ids), len(part_a)
    i, j = torch.arange(n).unsqueeze(1), torch.arange(n).unsqueeze(0)
    keep = (j < len_a) | ((i >= len_a) & (j <= i))
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
            "position_ids": torch.tensor([pos1, pos2]), "attention_mask": keep, "len_a": len_a}


class TwoDPositions(nn.Module):
    """GLM's 2-D position embedding: E1[position1] + E2[position2]."""

    def __init__(self, max_positions: int, dim: int):
        super().__init__()
        self.inter = nn.Embedding(max_positions, dim)  # position in the corrupted text (Part A)
        self.intra = nn.Embedding(max_positions, dim)  # position inside a span (0 in Part A)
        nn.init.normal_(self.inter.weight, std=0.02)
        nn.init.normal_(self.intra.weight, std=0.02)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        """(2, L) or (B, 2, L) -> (L, d) or (B, L, d)."""
        return self.inter(position_ids[..., 0, :]) + self.intra(position_ids[..., 1, :])


def glm_logits(model, positions: TwoDPositions, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits (L, V) of a `Transformer` (position="none") on one `blank_infilling` example."""
    if model.config.position != "none":
        raise UserError(f"GLM's 2-D positions replace the model's own: build it with position=none "
                        f"(this one: {model.config.position})")
    pe = positions(batch["position_ids"]).unsqueeze(0)
    n = batch["input_ids"].numel()
    return model(batch["input_ids"].unsqueeze(0), attention_mask=batch["attention_mask"].view(1, 1, n, n),
                 position_ids=batch["position_ids"][0], position_embeds=pe)[0]
