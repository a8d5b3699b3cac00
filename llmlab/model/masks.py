"""Which keys each query may see: causal, left padding, sliding window (Mistral; Beltagy et al.
2020), local + strided sparse (Child et al. 2019, Sparse Transformer), prefix LM (Raffel et al.
2020 §3.3; GLM, U-PaLM: every query also sees the first prefix_lengths[b] keys, so the prefix is
bidirectional and the rest causal).

Returns a boolean keep-mask (B|1, 1, T, S) for queries at absolute step past..past+T-1 over keys
0..S-1, or None when plain causal attention needs no mask (the fast SDPA path).
"""
from __future__ import annotations

import torch


def keep_mask(cfg, T: int, past: int, attention_mask: torch.Tensor | None, device,
              force: bool = False, prefix: torch.Tensor | None = None) -> torch.Tensor | None:
    """prefix: (B,) count of leading key columns every query sees (None = plain causal)."""
    window, stride = cfg.sliding_window, cfg.sparse_stride
    if attention_mask is None and window is None and stride is None and prefix is None and not force:
        return None
    S = past + T
    i = torch.arange(T, device=device).unsqueeze(1) + past
    j = torch.arange(S, device=device).unsqueeze(0)
    m = j <= i
    if window is not None:
        m = m & (i - j < window)
    if stride is not None:  # Sparse Transformer "strided": the previous `stride` keys, then every stride-th
        m = m & ((i - j < stride) | ((i - j) % stride == 0))
    m = m.unsqueeze(0)
    if prefix is not None:
        m = m | (j.unsqueeze(0) < prefix.to(device).view(-1, 1, 1))
    if attention_mask is not None:
        m = m & attention_mask[:, :S].bool().unsqueeze(1)
        m = m | (j == i).unsqueeze(0)  # a padding query attends to itself: no all-masked rows (NaN)
    return m.unsqueeze(1)


def key_positions(attention_mask: torch.Tensor | None, S: int, device) -> torch.Tensor:
    """(B|1, S) position of every key: counted over real tokens when left-padded."""
    if attention_mask is None:
        return torch.arange(S, device=device).unsqueeze(0)
    return (attention_mask[:, :S].long().cumsum(-1) - 1).clamp(min=0)
