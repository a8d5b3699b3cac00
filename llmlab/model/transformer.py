"""The decoder-only Transformer: embeddings -> N pre-norm blocks -> final norm -> LM head.

Module names follow HF `LlamaForCausalLM` (model.embed_tokens, model.layers.N.self_attn.q_proj,
..., lm_head), so LLaMA checkpoints and PEFT target-module names map one to one.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.model.block import Block
from llmlab.model.config import ModelConfig
from llmlab.model.norm import make_norm
from llmlab.model.rope import RotaryEmbedding


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        if cfg.position == "learned":
            self.embed_positions = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = make_norm(cfg.norm, cfg.hidden_size, cfg.rms_norm_eps)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rope = (RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta)
                     if cfg.position == "rope" else None)
        self.gradient_checkpointing = False
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2L)
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, cfg.initializer_range / math.sqrt(2 * cfg.num_hidden_layers))
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, self.config.initializer_range)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor, cache=None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, last_only: bool = False,
                return_hidden: bool = False) -> torch.Tensor:
        """input_ids (B, T) -> logits (B, T, V) (or (B, 1, V) with last_only).

        cache: a KVCache; the new tokens are appended after cache.length positions.
        attention_mask: (B, past + T), 1 for real tokens, 0 for (left) padding.
        """
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.max_position_embeddings:
            raise ValueError(f"sequence of {past + T} tokens exceeds the context window "
                             f"({self.config.max_position_embeddings})")
        if position_ids is None:
            if attention_mask is not None:  # left padding: real tokens count from 0
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            else:
                position_ids = torch.arange(past, past + T, device=input_ids.device)
        x = self.model.embed_tokens(input_ids)
        if self.config.position == "learned":
            x = x + self.model.embed_positions(position_ids)
            rope = None
        else:
            rope = self.rope(position_ids, x.dtype)
        mask = None
        if attention_mask is not None:
            mask = self._padding_mask(attention_mask, past, T)
        last = len(self.model.layers) - 1
        for i, layer in enumerate(self.model.layers):
            if self.gradient_checkpointing and self.training:
                # a cache that never changes during forward (e.g. a PEFT prefix) is safe to recompute with
                ckpt_cache = cache if getattr(cache, "stateless", False) else None
                x = torch.utils.checkpoint.checkpoint(layer, x, rope, ckpt_cache, mask, use_reentrant=False)
            else:  # only the next-token logits wanted: the last layer works on the last token only
                x = layer(x, rope, cache, mask, last_only=last_only and i == last)
        if cache is not None:
            cache.advance(T)
        if last_only:
            x = x[:, -1:]
        x = self.model.norm(x)
        if return_hidden:
            return x
        return self.lm_head(x)

    @staticmethod
    def _padding_mask(attention_mask: torch.Tensor, past: int, T: int) -> torch.Tensor:
        """(B, S) keep-mask -> (B, 1, T, S) boolean causal mask that also hides padding keys."""
        S = past + T
        keys = attention_mask[:, :S].bool()
        i = torch.arange(T, device=keys.device).unsqueeze(1) + past
        j = torch.arange(S, device=keys.device).unsqueeze(0)
        m = (j <= i).unsqueeze(0) & keys.unsqueeze(1)
        m = m | (j == i).unsqueeze(0)  # a padding query attends to itself: no all-masked rows (NaN)
        return m.unsqueeze(1)

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, **kw) -> torch.Tensor:
        """Mean next-token cross-entropy; labels are already shifted, -100 is ignored."""
        logits = self(input_ids, **kw)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)

    def num_params(self, non_embedding: bool = False) -> int:
        """All parameters (tied weights once); non_embedding: the blocks and final norm only
        (no token/position embedding, no LM head), the N of Kaplan et al.'s scaling laws."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.model.embed_tokens.weight.numel()
            if not self.config.tie_word_embeddings:
                n -= self.lm_head.weight.numel()
            if self.config.position == "learned":
                n -= self.model.embed_positions.weight.numel()
        return n


def num_params(cfg: ModelConfig, non_embedding: bool = False) -> int:
    """Closed-form parameter count (matches Transformer.num_params)."""
    d, L, f = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    attn = d * q + 2 * d * kv + q * d + (q + 2 * kv + d if cfg.attention_bias else 0)
    mlp = (3 if cfg.mlp == "swiglu" else 2) * d * f + ((2 * f + d if cfg.mlp == "swiglu" else f + d) if cfg.mlp_bias else 0)
    norm = d if cfg.norm == "rmsnorm" else 2 * d
    n = L * (attn + mlp + 2 * norm) + norm
    if non_embedding:
        return n
    n += cfg.vocab_size * d * (1 if cfg.tie_word_embeddings else 2)
    if cfg.position == "learned":
        n += cfg.max_position_embeddings * d
    return n


def flops_per_token(cfg: ModelConfig, seq_len: int, training: bool = True) -> float:
    """Kaplan et al. 2020 / PaLM (Chowdhery et al. 2022, App. B): 6N + 12*L*H*Q*T per trained token,
    where N counts non-embedding weights plus the LM head (a matmul, unlike the embedding lookup).
    Forward only is one third of that (2N + 4*L*H*Q*T)."""
    n = num_params(cfg, non_embedding=True) + cfg.vocab_size * cfg.hidden_size
    attn = cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq_len
    fwd = 2 * n + 4 * attn
    return 3 * fwd if training else fwd


def from_state_dict(cfg: ModelConfig, state: dict[str, torch.Tensor], source: str,
                    dtype: torch.dtype = torch.float32) -> Transformer:
    """Build a model around `state` without a throwaway random init; strict key/shape check.

    With tied embeddings the state may omit lm_head.weight (HF does); if present it must equal
    the embedding.
    """
    from llmlab.checkpoint import check_state_dict
    from llmlab.errors import UserError

    with skip_init():
        model = Transformer(cfg)
    expected = model.state_dict()
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight")
        lm = state.pop("lm_head.weight", None)
        if lm is not None and not torch.equal(lm, state.get("model.embed_tokens.weight", lm)):
            raise UserError(f"{source}: tie_word_embeddings is true but lm_head.weight differs from the embedding")
    check_state_dict(expected, state, source)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.to(dtype).eval()


@contextlib.contextmanager
def skip_init():
    """Build modules without random init (weights are about to be overwritten).

    Cheaper than `with torch.device("meta")`, whose first use imports torch._dynamo (2-10 s).
    """
    names = ("kaiming_uniform_", "uniform_", "normal_", "zeros_", "trunc_normal_")
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda t, *a, **k: t)
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)
