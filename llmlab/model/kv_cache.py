"""A contiguous, preallocated KV cache for incremental decoding.

Each layer owns k/v buffers of shape (batch, n_kv_heads, max_len, head_dim); `length` is how
many positions are filled. Decoding one token then costs one write per layer instead of a
torch.cat that copies the whole history (the paged cache in llmlab.infer goes further). MLACache holds multi-head latent
attention's latents instead (llmlab/model/mla.py).
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_len = max_len
        self.length = 0

    @classmethod
    def for_model(cls, model, batch: int, max_len: int | None = None) -> "KVCache":
        cfg = model.config
        if cfg.kv_lora_rank is not None and cls is KVCache:  # MLA caches latents (llmlab/model/mla.py)
            return MLACache.for_model(model, batch, max_len)
        p = next(model.parameters())
        return cls(cfg.num_hidden_layers, batch, cfg.num_key_value_heads,
                   max_len or cfg.max_position_embeddings, cfg.head_dim, p.dtype, p.device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, Hkv, T, D) at the current position; return the filled prefix (views)."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions > max_len {self.max_len}")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def crop(self, length: int) -> None:
        """Forget positions >= length (e.g. to re-decode from a shorter prefix)."""
        self.length = min(self.length, length)

    def select(self, index: torch.Tensor) -> None:
        """Reorder/select batch rows (beam search)."""
        self.k = [k.index_select(0, index) for k in self.k]
        self.v = [v.index_select(0, index) for v in self.v]


class MLACache(KVCache):
    """The latent cache: `k` holds c_KV (B, 1, L, kv_lora_rank), `v` holds k_R (B, 1, L, qk_rope_head_dim)."""

    def __init__(self, num_layers: int, batch: int, max_len: int, kv_lora_rank: int, rope_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.k = [torch.zeros(batch, 1, max_len, kv_lora_rank, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(batch, 1, max_len, rope_dim, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_len, self.length = max_len, 0

    @classmethod
    def for_model(cls, model, batch: int, max_len: int | None = None) -> "MLACache":
        cfg, p = model.config, next(model.parameters())
        return cls(cfg.num_hidden_layers, batch, max_len or cfg.max_position_embeddings, cfg.kv_lora_rank,
                   cfg.qk_rope_head_dim, p.dtype, p.device)
