"""The decoder-only Transformer: embeddings -> N blocks -> final norm -> LM head.

Module names follow HF `LlamaForCausalLM` (model.embed_tokens, model.layers.N.self_attn.q_proj,
..., lm_head), so LLaMA checkpoints and PEFT target-module names map one to one; other families
are renamed on load/save (llmlab/model/hf_arch.py). Every variant of ModelConfig is wired here:
positions (rope.py, positions.py), masks (masks.py), blocks (block.py), MoE losses (moe.py).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.model.block import Block
from llmlab.model.config import ModelConfig
from llmlab.model.linear import linear
from llmlab.model.masks import key_positions, keep_mask
from llmlab.model.norm import make_norm
from llmlab.model.rope import RotaryEmbedding


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        if cfg.position == "learned":
            self.embed_positions = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        if cfg.embedding_layernorm:
            self.embed_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        if cfg.position == "t5":
            from llmlab.model.positions import T5Bias
            self.relative_attention_bias = T5Bias(cfg.num_attention_heads, cfg.relative_attention_num_buckets,
                                                  cfg.relative_attention_max_distance)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        if cfg.norm_placement != "post":  # post-norm blocks already end normalised
            self.norm = make_norm(cfg.norm, cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_weight_offset)


def max_length(cfg: ModelConfig) -> int:
    """Longest sequence the model takes: the trained context, x factor for dynamic NTK; ALiBi, T5
    and no positions extrapolate (their selling point), bounded only by memory."""
    if cfg.position in ("alibi", "t5", "none"):
        return 1 << 30
    if cfg.rope_type == "dynamic":
        return int(cfg.max_position_embeddings * cfg.rope_scaling["factor"])
    return cfg.max_position_embeddings


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=cfg.lm_head_bias)
        self.rope = RotaryEmbedding(cfg) if cfg.position == "rope" else None
        self.max_length = max_length(cfg)
        if cfg.position == "sinusoidal":
            from llmlab.model.positions import sinusoidal_table
            self.register_buffer("sinusoid", sinusoidal_table(cfg.max_position_embeddings, cfg.hidden_size),
                                 persistent=False)
        if cfg.position == "alibi":
            from llmlab.model.positions import alibi_slopes
            self.register_buffer("alibi_slopes", alibi_slopes(cfg.num_attention_heads), persistent=False)
        self.moe = bool(cfg.num_local_experts)
        self.gradient_checkpointing = False
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2L)
            if name.endswith(("o_proj.weight", "down_proj.weight", "experts.down_proj")):
                nn.init.normal_(p, 0.0, cfg.initializer_range / math.sqrt(2 * cfg.num_hidden_layers))
        if cfg.deepnorm:  # Wang et al. 2022: xavier init, gain beta=(8N)^-1/4 on v, o and the MLP
            beta = (8 * cfg.num_hidden_layers) ** -0.25
            for name, p in self.named_parameters():
                if ".layers." in name and name.endswith("_proj.weight"):
                    nn.init.xavier_normal_(p, gain=1.0 if name.endswith(("q_proj.weight", "k_proj.weight")) else beta)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, self.config.initializer_range)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if type(m).__name__ == "Experts":
            for p in m.parameters():
                nn.init.normal_(p, 0.0, self.config.initializer_range)

    @property
    def fused_ce_ok(self) -> bool:
        """The trainer's chunked LM-head + cross-entropy applies (no head bias, no logit soft-cap)."""
        return self.lm_head.bias is None and self.config.final_logit_softcapping is None

    def aux_loss(self) -> torch.Tensor | None:
        """MoE training losses of the last forward (router_aux_loss_coef, router_z_loss_coef); None if dense."""
        if not self.moe or not (self.config.router_aux_loss_coef or self.config.router_z_loss_coef):
            return None
        from llmlab.model.moe import load_balancing_loss, z_loss
        cfg = self.config
        logits = [blk.mlp.router_logits for blk in self.model.layers if blk.mlp.router_logits is not None]
        loss = logits[0].new_zeros((), dtype=torch.float32)
        if cfg.router_aux_loss_coef:
            loss = loss + cfg.router_aux_loss_coef * load_balancing_loss(
                logits, cfg.num_local_experts, cfg.num_experts_per_tok, getattr(self, "balance_f_reduce", None))
        if cfg.router_z_loss_coef:
            loss = loss + cfg.router_z_loss_coef * z_loss(logits)
        return loss

    def forward(self, input_ids: torch.Tensor, cache=None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, last_only: bool = False,
                return_hidden: bool = False, prefix_lengths: torch.Tensor | None = None,
                position_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) -> logits (B, T, V) (or (B, 1, V) with last_only).

        cache: a KVCache; the new tokens are appended after cache.length positions.
        attention_mask: (B, past + T), 1 for real tokens, 0 for (left) padding.
        prefix_lengths: (B,) or int, prefix decoder: positions < prefix_lengths[b] attend to each
        other both ways (training). A prefix_lm model prefilling a cache treats the whole prompt as
        the prefix (generation); otherwise attention is causal.
        position_embeds: (B|1, T, d) added to the token embeddings (GLM's 2-D positions, llmlab.model.glm).
        """
        B, T = input_ids.shape
        cfg = self.config
        past = cache.length if cache is not None else 0
        if past + T > self.max_length:
            raise ValueError(f"sequence of {past + T} tokens exceeds the context window ({self.max_length})")
        if position_ids is None:
            if attention_mask is not None:  # left padding: real tokens count from 0
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            else:
                position_ids = torch.arange(past, past + T, device=input_ids.device)
        x = self.model.embed_tokens(input_ids)
        if position_embeds is not None:
            x = x + position_embeds.to(x.dtype)
        rope = None
        if cfg.position == "rope":
            rope = self.rope(position_ids, x.dtype)
        elif cfg.position == "learned":
            x = x + self.model.embed_positions(position_ids)
        elif cfg.position == "sinusoidal":
            x = x + self.sinusoid[position_ids].to(x.dtype)
        if cfg.scale_embeddings:  # Gemma: sqrt(d), rounded to the activation dtype as HF does
            x = x * torch.tensor(cfg.hidden_size ** 0.5, dtype=x.dtype)
        if cfg.embedding_layernorm:
            x = self.model.embed_layernorm(x)
        if prefix_lengths is None and cfg.prefix_lm and cache is not None and past == 0:
            prefix_lengths = T  # generation: the prompt is the prefix
        if prefix_lengths is not None:
            prefix_lengths = torch.as_tensor(prefix_lengths, device=x.device).long().reshape(-1)
        mask = self._attention_mask(attention_mask, past, T, x, prefix_lengths)
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
        if cfg.norm_placement != "post":
            x = self.model.norm(x)
        if return_hidden:
            return x
        logits = linear(self.lm_head, x)  # training, fp32 CPU: oneDNN (llmlab.model.linear); else the module
        if cfg.final_logit_softcapping is not None:
            c = cfg.final_logit_softcapping
            logits = c * torch.tanh(logits / c)
        return logits

    def _attention_mask(self, attention_mask, past: int, T: int, x: torch.Tensor, prefix=None):
        """None (plain causal), a bool keep-mask (B|1, 1, T, S), or with ALiBi/T5 a float bias
        (B|1, H, T, S) holding -inf where a key is hidden. prefix: (B,) prefix-LM lengths."""
        cfg = self.config
        bias_kind = cfg.position if cfg.position in ("alibi", "t5") else None
        if attention_mask is not None and attention_mask.dim() == 4:  # a ready mask (packed rows)
            return self._padding_mask(attention_mask, past, T)
        s2 = cfg.s2_group_size if self.training else None  # LongLoRA: S2-Attn in training, full attention after
        if (bias_kind is None and cfg.sliding_window is None and cfg.sparse_stride is None and prefix is None
                and not s2):
            return None if attention_mask is None else self._padding_mask(attention_mask, past, T)
        mask = keep_mask(cfg, T, past, attention_mask, x.device, force=bias_kind is not None, prefix=prefix,
                         s2_group=s2)
        if bias_kind is None:
            return mask
        k_pos = key_positions(attention_mask, past + T, x.device)
        q_pos = k_pos[:, past:]
        if bias_kind == "alibi":
            from llmlab.model.positions import alibi_bias
            bias = alibi_bias(self.alibi_slopes, q_pos, k_pos)
        else:
            bias = self.model.relative_attention_bias(q_pos, k_pos)
        return bias.to(x.dtype).masked_fill(~mask, float("-inf"))

    @staticmethod
    def _padding_mask(attention_mask: torch.Tensor, past: int, T: int) -> torch.Tensor:
        """(B, S) keep-mask -> (B, 1, T, S) boolean causal mask that also hides padding keys; a
        ready (B|1, 1, T, S) boolean mask is used as it is (parallel context windows, GLM's blank
        infilling: llmlab.model.pcw, .glm). An instance may swap this builder: llmlab/finetune/packing.py."""
        if attention_mask.dim() == 4 and attention_mask.dtype == torch.bool:
            return attention_mask
        from types import SimpleNamespace
        plain = SimpleNamespace(sliding_window=None, sparse_stride=None)
        return keep_mask(plain, T, past, attention_mask, attention_mask.device)

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, **kw) -> torch.Tensor:
        """Mean next-token cross-entropy; labels are already shifted, -100 is ignored."""
        logits = self(input_ids, **kw)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)
        aux = self.aux_loss()
        return loss if aux is None else loss + aux

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
    """Closed-form parameter count (matches Transformer.num_params for every variant)."""
    d, L, f = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim

    def norm(n):
        return n if cfg.norm == "rmsnorm" else 2 * n
    attn = d * q + 2 * d * kv + q * d + (q + 2 * kv if cfg.attention_bias else 0)
    attn += (d if cfg.attention_out_bias else 0) + (2 * norm(cfg.head_dim) if cfg.qk_norm else 0)
    if cfg.kv_lora_rank is not None:  # MLA (llmlab/model/mla.py)
        H, r, rq, qk = cfg.num_attention_heads, cfg.kv_lora_rank, cfg.q_lora_rank, cfg.qk_nope_head_dim + cfg.head_dim
        b = cfg.attention_bias
        attn = (d * rq + (rq if b else 0) + rq + rq * H * qk) if rq else d * H * qk
        attn += d * (r + cfg.head_dim) + ((r + cfg.head_dim) if b else 0) + r + r * H * (cfg.qk_nope_head_dim + cfg.v_head_dim)
        attn += H * cfg.v_head_dim * d + (d if cfg.attention_out_bias else 0)
    if cfg.num_local_experts:
        fe = cfg.moe_intermediate_size or f
        mlp = cfg.num_local_experts * (3 * d * fe + d) + 3 * d * fe * cfg.n_shared_experts
    else:
        mats = 3 if cfg.is_gated else 2
        mlp = mats * d * f + (((mats - 1) * f + d) if cfg.mlp_bias else 0)
    norms = 1 if cfg.parallel_block else 2 + (2 if cfg.norm_placement == "sandwich" else 0)
    n = L * (attn + mlp + norms * norm(d)) + (norm(d) if cfg.norm_placement != "post" else 0)
    n += 2 * d if cfg.embedding_layernorm else 0
    n += cfg.relative_attention_num_buckets * cfg.num_attention_heads if cfg.position == "t5" else 0
    n += cfg.vocab_size if cfg.lm_head_bias else 0
    if non_embedding:
        return n
    n += cfg.vocab_size * d * (1 if cfg.tie_word_embeddings else 2)
    if cfg.position == "learned":
        n += cfg.max_position_embeddings * d
    return n


def flops_per_token(cfg: ModelConfig, seq_len: int, training: bool = True) -> float:
    """Kaplan et al. 2020 / PaLM (Chowdhery et al. 2022, App. B): 6N + 12*L*H*Q*T per trained token,
    where N counts non-embedding weights plus the LM head (a matmul, unlike the embedding lookup).
    Forward only is one third of that (2N + 4*L*H*Q*T). With MoE, N counts the active experts only."""
    n = num_params(cfg, non_embedding=True) + cfg.vocab_size * cfg.hidden_size
    if cfg.num_local_experts:  # only the k routed experts a token visits do work
        fe = cfg.moe_intermediate_size or cfg.intermediate_size
        n -= cfg.num_hidden_layers * (cfg.num_local_experts - cfg.num_experts_per_tok) * 3 * cfg.hidden_size * fe
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
