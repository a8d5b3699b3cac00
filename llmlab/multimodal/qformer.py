"""BLIP's matching objective with mined hard negatives, and BLIP-2's Q-Former (Li et al. 2022, 2023).

Image-text matching (ITM): a binary classifier on fused image-text features says whether a pair
belongs together. Random negatives are too easy, so BLIP mines them from the contrastive
similarities: for each image, a negative text is sampled with probability softmax(sim_i) over
the *other* texts (captions identical to the positive are excluded: they are not negatives), and
likewise a negative image for each text. ITM then sees each positive, one hard negative text and
one hard negative image: cross-entropy over {match, no match}.

Q-Former: `num_queries` learned query vectors pass through blocks of self-attention (among the
queries, and with the text tokens when given: BLIP-2's shared self-attention), cross-attention to
the frozen image encoder's features, and a feed-forward layer. Its outputs are a fixed number of
visual tokens whatever the patch count: projected to the LM width they bridge a frozen image
encoder to a frozen LM (BLIP-2's second stage), the same splice as LLaVA's projector.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.multimodal.flamingo import CrossAttention, FeedForward
from llmlab.multimodal.vit import Attention


def hard_negatives(sim: torch.Tensor, groups: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """sim (N, N) image-text similarities (pair i is positive). -> (negative text index for each
    image, negative image index for each text), sampled from softmax over non-matching entries.
    `groups`: pairs with the same id share a caption and are never each other's negative."""
    n = sim.shape[0]
    same = torch.eye(n, dtype=torch.bool, device=sim.device)
    if groups is not None:
        same = groups.unsqueeze(0) == groups.unsqueeze(1)
    if same.all(1).any():
        raise ValueError("a batch needs at least one non-matching caption per image to mine negatives")
    with torch.no_grad():
        w_i2t = F.softmax(sim.float(), dim=1).masked_fill(same, 0)
        w_t2i = F.softmax(sim.float().t(), dim=1).masked_fill(same, 0)
        neg_text = torch.multinomial(w_i2t, 1, generator=generator).squeeze(1)
        neg_image = torch.multinomial(w_t2i, 1, generator=generator).squeeze(1)
    return neg_text, neg_image


def itm_loss(head: nn.Module, fuse, images: torch.Tensor, texts: torch.Tensor, neg_text: torch.Tensor,
             neg_image: torch.Tensor) -> torch.Tensor:
    """BLIP's ITM: `fuse(images, texts)` -> (B, D) joint features; `head` -> 2 logits (no match, match).
    Positives, (image, hard negative text) and (hard negative image, text), 1 : 2 as in BLIP."""
    pos = fuse(images, texts)
    neg1 = fuse(images, texts[neg_text])
    neg2 = fuse(images[neg_image], texts)
    logits = head(torch.cat([pos, neg1, neg2]))
    labels = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg1) + len(neg2))]).long().to(logits.device)
    return F.cross_entropy(logits, labels)


class QFormerBlock(nn.Module):
    def __init__(self, dim: int, vision_dim: int, heads: int):
        super().__init__()
        self.norm1, self.self_attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.cross_attn = nn.LayerNorm(dim), CrossAttention(dim, vision_dim, heads)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, image_feats: torch.Tensor, n_queries: int) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))  # queries (and text, if present) attend to each other
        q = x[:, :n_queries]
        q = q + self.cross_attn(self.norm2(q), image_feats)  # only the queries see the image
        x = torch.cat([q, x[:, n_queries:]], dim=1)
        return x + self.ff(x)


class QFormer(nn.Module):
    def __init__(self, dim: int, vision_dim: int, num_queries: int = 8, depth: int = 2, heads: int = 4):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(1, num_queries, dim) * 0.02)
        self.blocks = nn.ModuleList(QFormerBlock(dim, vision_dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, image_feats: torch.Tensor, text_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """image_feats (B, N, vision_dim) [, text_embeds (B, T, dim)] -> (B, num_queries [+ T], dim)."""
        n_q = self.queries.shape[1]
        x = self.queries.expand(image_feats.shape[0], -1, -1)
        if text_embeds is not None:
            x = torch.cat([x, text_embeds], dim=1)
        for blk in self.blocks:
            x = blk(x, image_feats, n_q)
        return self.norm(x)
