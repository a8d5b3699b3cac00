"""Position information other than RoPE (llmlab/model/rope.py).

- Sinusoidal absolute (Vaswani et al. 2017): PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(same),
  added to the token embeddings; no weights.
- Learned absolute (GPT-2): an embedding table `model.embed_positions` (in transformer.py).
- ALiBi (Press et al. 2022, BLOOM): no embedding; attention score s_ij gets -m_h * (i - j), with head
  slopes m_h a geometric sequence 2^(-8h/n) (interleaved for head counts that are not powers of 2).
- T5 relative bias (Raffel et al. 2020): a learned scalar per head and bucket of j - i; buckets are
  exact up to num_buckets/2, then logarithmic up to max_distance; bidirectional buckets split by sign.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_table(n: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """(n, dim) with sin on even channels and cos on odd ones."""
    inv = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    ang = torch.outer(torch.arange(n, dtype=torch.float64), inv)
    pe = torch.zeros(n, dim, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = ang.sin(), ang.cos()[:, : dim // 2]
    return pe.float()


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Press et al.: for 2^k heads, m_h = 2^(-8h/2^k), h = 1..2^k; otherwise the 2^k closest below plus
    every other slope of the 2^(k+1) sequence."""
    def geometric(n):
        return [2 ** (-8 * h / n) for h in range(1, n + 1)]
    p = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = geometric(p) + geometric(2 * p)[0::2][: n_heads - p]
    return torch.tensor(slopes, dtype=torch.float32)


def t5_bucket(rel: torch.Tensor, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """Bucket index of relative position rel = j - i (key minus query)."""
    buckets = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (rel > 0).long() * num_buckets
        dist = rel.abs()
    else:
        dist = (-rel).clamp(min=0)  # causal: only keys behind the query
    exact = num_buckets // 2
    log_part = exact + (torch.log(dist.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                        * (num_buckets - exact)).long()
    log_part = log_part.clamp(max=num_buckets - 1)
    return buckets + torch.where(dist < exact, dist, log_part)


class T5Bias(nn.Module):
    """Learned (num_buckets, n_heads) table shared by all layers, as T5 computes it once."""

    def __init__(self, n_heads: int, num_buckets: int, max_distance: int, bidirectional: bool = False):
        super().__init__()
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.weight = nn.Parameter(torch.zeros(num_buckets, n_heads))

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """q_pos (B|1, T), k_pos (B|1, S) -> bias (B|1, H, T, S)."""
        b = t5_bucket(k_pos[:, None, :] - q_pos[:, :, None], self.bidirectional, self.num_buckets, self.max_distance)
        return self.weight[b].permute(0, 3, 1, 2)


def alibi_bias(slopes: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """-m_h * (i - j): (B|1, H, T, S)."""
    dist = (q_pos[:, :, None] - k_pos[:, None, :]).to(slopes.dtype)
    return -slopes[None, :, None, None] * dist[:, None]
