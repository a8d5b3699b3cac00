"""Prefix tuning (Li & Liang 2021) and P-tuning v2 deep prompts (Liu et al. 2022).

Every attention layer gets n trainable key/value vectors per KV head, prepended to the keys and
values of the real tokens; the frozen model's queries attend to them like to n earlier tokens.

- Prefix tuning trains them through an MLP reparameterisation, P = MLP(P'), with a smaller P'
  (n x d') and MLP d' -> h -> L*2*Hkv*D (Tanh), because optimising P directly was unstable
  (their Sec. 4.3). After training `fold()` evaluates the MLP once and keeps only P: identical
  outputs, and the saved file holds only L x 2 x Hkv x n x D numbers.
- P-tuning v2 ("deep prompt tuning") is the same per-layer key/value prompt trained directly,
  without the MLP (the authors' code and HF peft implement it exactly this way).

Injection without editing llmlab.model: the prefix is handed to the model as a KV cache that
already holds n positions (PrefixCache, a subclass of llmlab.model.KVCache). Attention then sees
keys [prefix; real] and, with past = n, applies a causal mask offset by n, so every real token
sees the whole prefix. Real tokens get positions n.. (as with HF peft's prefix tuning); the prefix
keys carry no rotary rotation of their own. A padding mask (B, T) is extended with n ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.errors import UserError
from llmlab.finetune import io
from llmlab.finetune.targets import freeze
from llmlab.model.kv_cache import KVCache


class PrefixCache(KVCache):
    """A KV cache whose first n positions are a (trainable) prefix.

    stateless (max_len=None, training/scoring): update() returns cat(prefix, new k/v) and keeps
    nothing, so gradients reach the prefix; length stays n. Otherwise a normal preallocated cache
    pre-filled with the (detached) prefix, for incremental decoding.
    """

    def __init__(self, prefix: torch.Tensor, batch: int, max_len: int | None = None):
        # prefix: (L, 2, Hkv, n, D)
        L, _, H, n, D = prefix.shape
        self.stateless = max_len is None
        if self.stateless:
            self.prefix, self.batch, self.max_len, self.length = prefix, batch, n, n
            return
        super().__init__(L, batch, H, max_len, D, prefix.dtype, prefix.device)
        for i in range(L):
            self.k[i][:, :, :n] = prefix[i, 0].detach()
            self.v[i][:, :, :n] = prefix[i, 1].detach()
        self.length = n

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if not self.stateless:
            return super().update(layer, k, v)
        B = k.shape[0]
        pk = self.prefix[layer, 0].to(k.dtype).unsqueeze(0).expand(B, -1, -1, -1)
        pv = self.prefix[layer, 1].to(v.dtype).unsqueeze(0).expand(B, -1, -1, -1)
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)

    def advance(self, n: int) -> None:
        if not self.stateless:
            super().advance(n)


def reserve(cache: KVCache, extra: int) -> None:
    """Give a plain KVCache `extra` more positions (in place), for the virtual tokens a generation
    loop that sized the cache for the real prompt does not know about."""
    if getattr(cache, "stateless", False):
        return
    grow = lambda t: torch.cat([t, t.new_zeros(*t.shape[:2], extra, t.shape[3])], dim=2)  # noqa: E731
    cache.k, cache.v = [grow(t) for t in cache.k], [grow(t) for t in cache.v]
    cache.max_len += extra


@dataclass
class PrefixConfig:
    num_virtual_tokens: int = field(default=10, metadata={"help": "prefix length n per layer"})
    prefix_projection: bool = field(default=True, metadata={"help": "MLP reparameterisation (prefix tuning); "
                                                                    "false = P-tuning v2 deep prompts"})
    token_dim: int = field(default=0, metadata={"help": "width d' of P' (0 = hidden_size)"})
    encoder_hidden_size: int = field(default=256, metadata={"help": "MLP hidden width h"})

    def __post_init__(self):
        if self.num_virtual_tokens < 1:
            raise UserError(f"num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}")


class PrefixModel(nn.Module):
    """A frozen causal LM with per-layer key/value prefixes. Same forward as Transformer."""

    def __init__(self, base: nn.Module, cfg: PrefixConfig, init_token_ids: list[int] | None = None):
        super().__init__()
        freeze(base)
        self.base, self.cfg, self.config = base, cfg, base.config
        c = base.config
        self.shape = (c.num_hidden_layers, 2, c.num_key_value_heads, cfg.num_virtual_tokens, c.head_dim)
        out = c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim
        dev = base.model.embed_tokens.weight.device
        if cfg.prefix_projection:
            dp = cfg.token_dim or c.hidden_size
            self.prefix_tokens = nn.Parameter(torch.randn(cfg.num_virtual_tokens, dp, device=dev) * 0.02)
            self.prefix_mlp = nn.Sequential(nn.Linear(dp, cfg.encoder_hidden_size, device=dev), nn.Tanh(),
                                            nn.Linear(cfg.encoder_hidden_size, out, device=dev))
            self.prefix_kv = None
        else:
            self.prefix_tokens = self.prefix_mlp = None
            init = self._real_kv(init_token_ids) if init_token_ids else torch.randn(self.shape, device=dev) * 0.02
            self.prefix_kv = nn.Parameter(init)

    @torch.no_grad()
    def _real_kv(self, ids: list[int]) -> torch.Tensor:
        """Li & Liang: initialise from the keys/values the frozen model computes for real words."""
        n = self.cfg.num_virtual_tokens
        ids = torch.tensor([[ids[i % len(ids)] for i in range(n)]])
        cache = KVCache.for_model(self.base, 1, n)
        self.base(ids, cache=cache)
        return torch.stack([torch.stack([cache.k[i][0], cache.v[i][0]]) for i in range(self.shape[0])]).clone()

    def prefix(self) -> torch.Tensor:
        """(L, 2, Hkv, n, D) key/value prefixes."""
        if self.prefix_kv is not None:
            return self.prefix_kv
        L, two, H, n, D = self.shape
        flat = self.prefix_mlp(self.prefix_tokens)  # (n, L*2*H*D)
        return flat.view(n, L, two, H, D).permute(1, 2, 3, 0, 4)

    @torch.no_grad()
    def fold(self) -> None:
        """Drop the reparameterisation MLP, keeping its output: identical outputs afterwards."""
        if self.prefix_kv is None:
            self.prefix_kv = nn.Parameter(self.prefix().detach().contiguous().clone())
            self.prefix_tokens = self.prefix_mlp = None

    def new_cache(self, batch: int, max_len: int | None = None) -> PrefixCache:
        """A decoding cache pre-filled with the prefix (for llmlab.infer-style generation loops)."""
        return PrefixCache(self.prefix().detach(), batch, max_len or self.config.max_position_embeddings)

    def forward(self, input_ids: torch.Tensor, cache=None, attention_mask: torch.Tensor | None = None,
                position_ids=None, last_only: bool = False, return_hidden: bool = False) -> torch.Tensor:
        B = input_ids.shape[0]
        n = self.cfg.num_virtual_tokens
        if getattr(self.base, "gradient_checkpointing", False) and self.training:
            # Transformer.forward passes cache=None to checkpointed layers: the prefix would vanish
            raise UserError("prefix tuning does not work with gradient_checkpointing (the layers get no cache)")
        if cache is None:
            cache = PrefixCache(self.prefix(), B)
        elif not isinstance(cache, PrefixCache) and not getattr(cache, "has_prefix", False):
            if cache.length != 0:
                raise UserError("a prefix-tuned model needs a fresh cache (length 0) or model.new_cache(batch)")
            # a plain KVCache from a generation loop: make room and write the prefix into it
            reserve(cache, n)
            kv = self.prefix().detach()
            for i in range(kv.shape[0]):
                cache.k[i][:, :, :n] = kv[i, 0]
                cache.v[i][:, :, :n] = kv[i, 1]
            cache.advance(n)
            cache.has_prefix = True
        if attention_mask is not None and attention_mask.shape[1] == cache.length - n + input_ids.shape[1]:
            attention_mask = torch.cat([attention_mask.new_ones(B, n), attention_mask], dim=1)
        return self.base(input_ids, cache=cache, attention_mask=attention_mask, position_ids=position_ids,
                         last_only=last_only, return_hidden=return_hidden)

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, **kw) -> torch.Tensor:
        logits = self(input_ids, **kw)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)

    def save(self, path: str | Path) -> Path:
        """Save the folded (L, 2, Hkv, n, D) prefix only."""
        method = "prefix" if self.cfg.prefix_projection else "ptuning_v2"
        cfg = {"llmlab_method": method, "num_virtual_tokens": self.cfg.num_virtual_tokens}
        return io.save_adapter(path, method, cfg, {"prefix_key_values": self.prefix().detach()}, self.base)

    @classmethod
    def load(cls, base: nn.Module, path: str | Path, allow_other_base: bool = False) -> "PrefixModel":
        config, tensors, meta = io.read_adapter(path)
        io.check_method(meta, ("prefix", "ptuning_v2"), path)
        io.check_base(meta, base, path, allow_other_base)
        if "num_virtual_tokens" not in config:
            raise UserError(f"{path}/{io.CONFIG}: missing key 'num_virtual_tokens'")
        model = cls(base, PrefixConfig(num_virtual_tokens=int(config["num_virtual_tokens"]), prefix_projection=False))
        io.load_strict_into({"prefix_key_values": model.prefix_kv.data}, tensors, path)
        return model
