"""Which keys each query may see: causal, left padding, sliding window (Mistral; Beltagy et al.
2020), local + strided sparse (Child et al. 2019, Sparse Transformer), prefix LM (Raffel et al.
2020 §3.3; GLM, U-PaLM: every query also sees the first prefix_lengths[b] keys, so the prefix is
bidirectional and the rest causal), LM-Infinite's Lambda-shaped mask (Han et al. 2023,
arXiv:2308.16137: the first `global_tokens` keys stay visible beside the sliding window), and
LongLoRA's shifted sparse attention S2-Attn (Chen et al. 2023, arXiv:2309.12307; `s2_heads`).

Returns a boolean keep-mask (B|1, 1, T, S) for queries at absolute step past..past+T-1 over keys
0..S-1, or None when plain causal attention needs no mask (the fast SDPA path).
"""
from __future__ import annotations

import torch


def keep_mask(cfg, T: int, past: int, attention_mask: torch.Tensor | None, device,
              force: bool = False, prefix: torch.Tensor | None = None, s2_group: int | None = None
              ) -> torch.Tensor | None:
    """prefix: (B,) count of leading key columns every query sees (None = plain causal).
    s2_group: S2-Attn group size (training only): the mask becomes per head (B|1, H, T, S)."""
    window, stride = cfg.sliding_window, cfg.sparse_stride
    if (attention_mask is None and window is None and stride is None and prefix is None and not force
            and not s2_group):
        return None
    S = past + T
    i = torch.arange(T, device=device).unsqueeze(1) + past
    j = torch.arange(S, device=device).unsqueeze(0)
    m = j <= i
    if window is not None:  # Lambda-shape: the window plus the first global_tokens keys
        m = m & ((i - j < window) | (j < (getattr(cfg, "global_tokens", None) or 0)))
    if stride is not None:  # Sparse Transformer "strided": the previous `stride` keys, then every stride-th
        m = m & ((i - j < stride) | ((i - j) % stride == 0))
    m = m.unsqueeze(0)
    if prefix is not None:
        m = m | (j.unsqueeze(0) < prefix.to(device).view(-1, 1, 1))
    if attention_mask is not None:
        m = m & attention_mask[:, :S].bool().unsqueeze(1)
        m = m | (j == i).unsqueeze(0)  # a padding query attends to itself: no all-masked rows (NaN)
    m = m.unsqueeze(1)
    return m & s2_heads(i, j, s2_group, cfg.num_attention_heads) if s2_group else m


def s2_heads(i: torch.Tensor, j: torch.Tensor, group: int, heads: int) -> torch.Tensor:
    """S2-Attn as a (1, H, T, S) mask: the first half of the heads attend within groups of `group`
    tokens, the second half within groups shifted by group/2, so information flows between
    neighbouring groups. LongLoRA rolls the tokens by -group/2 instead, which wraps the last
    half-group onto the first and lets tokens 0..group/2-1 see the sequence's end (a future leak
    in a causal model); the mask form has no wrap, so the first shifted group is half as long."""
    half = group // 2
    plain = (i // group) == (j // group)
    shifted = ((i + half) // group) == ((j + half) // group)
    n_plain = heads - heads // 2
    return torch.stack([plain] * n_plain + [shifted] * (heads // 2)).unsqueeze(0)


def key_positions(attention_mask: torch.Tensor | None, S: int, device) -> torch.Tensor:
    """(B|1, S) position of every key: counted over real tokens when left-padded."""
    if attention_mask is None:
        return torch.arange(S, device=device).unsqueeze(0)
    return (attention_mask[:, :S].long().cumsum(-1) - 1).clamp(min=0)
