"""Encoder-decoder Transformer, T5 style (Raffel et al. 2020, "Exploring the Limits of Transfer
Learning with a Unified Text-to-Text Transformer").

An encoder (bidirectional self-attention) reads the input; a decoder (causal self-attention, then
cross-attention to the encoder's states: softmax(q_dec k_enc^T) v_enc) writes the output. T5's
choices, all kept so HF T5 checkpoints load and match `T5ForConditionalGeneration`:
- pre-norm RMSNorm without bias ("T5LayerNorm"), no biases anywhere;
- no 1/sqrt(d) in attention (folded into the initialisation);
- relative position bias (llmlab/model/positions.py `T5Bias`): one learned (buckets, heads) table
  per stack, held by the first block and reused by every layer; bidirectional buckets in the
  encoder, causal in the decoder; cross-attention has none;
- tied embeddings scale the decoder output by d_model^-1/2 before the LM head.

Generation encodes the prompt once; the decoder keeps a self-attention KV cache and computes each
layer's cross-attention K/V from the encoder states once, at the first step (`EncDecCache`).
Module names are HF's (shared, encoder.block.N.layer.M.SelfAttention.q, ..., DenseReluDense.wi),
so a state dict maps one to one; config.json is HF's T5Config.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.errors import UserError
from llmlab.model.kv_cache import KVCache
from llmlab.model.mlp import ACTIVATIONS
from llmlab.model.norm import make_norm
from llmlab.model.positions import T5Bias

# HF feed_forward_proj -> (gated, activation); "gated-gelu" is the tanh GELU in HF (T5 v1.1)
FEED_FORWARD = {"relu": (False, "relu"), "gelu": (False, "gelu"), "silu": (False, "silu"),
                "gated-gelu": (True, "gelu_new"), "gated-silu": (True, "silu"), "gated-relu": (True, "relu")}


@dataclass
class EncDecConfig:
    """HF T5Config's fields (the ones that shape the model), with ModelConfig-style aliases."""
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: Optional[int] = None  # default num_layers
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    # T5 v1.0 scales the decoder output by d_model^-1/2 (it ties the head), v1.1 does not; None =
    # tie_word_embeddings (the old configs' rule; transformers 5 writes this key and always ties)
    scale_decoder_outputs: Optional[bool] = None
    initializer_factor: float = 1.0
    pad_token_id: int = 0
    eos_token_id: Optional[int] = 1
    decoder_start_token_id: int = 0
    # relative positions have no hard limit; this sizes caches and generation budgets (old HF T5 key)
    n_positions: int = 512
    extra: dict = field(default_factory=dict)  # e.g. special_tokens: name -> id
    model_type = "t5"
    prefix_lm = False

    def __post_init__(self):
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        if self.scale_decoder_outputs is None:
            self.scale_decoder_outputs = self.tie_word_embeddings
        if self.feed_forward_proj not in FEED_FORWARD:
            raise UserError(f"feed_forward_proj '{self.feed_forward_proj}' unknown (use one of {', '.join(FEED_FORWARD)})")
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be > 0, got {getattr(self, name)}")

    # the names the trainer and tools read off a ModelConfig
    hidden_size = property(lambda self: self.d_model)
    intermediate_size = property(lambda self: self.d_ff)
    num_attention_heads = property(lambda self: self.num_heads)
    num_key_value_heads = property(lambda self: self.num_heads)
    head_dim = property(lambda self: self.d_kv)
    num_hidden_layers = property(lambda self: self.num_layers + self.num_decoder_layers)
    max_position_embeddings = property(lambda self: self.n_positions)
    bos_token_id = property(lambda self: None)

    def beyond_llama_gpt(self) -> list[str]:
        return ["encoder-decoder"]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_hf(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "extra"}
        gated, act = FEED_FORWARD[self.feed_forward_proj]
        d.update(architectures=["T5ForConditionalGeneration"], model_type="t5", is_encoder_decoder=True,
                 is_gated_act=gated, dense_act_fn=act, dropout_rate=0.0, use_cache=True)
        if self.extra:
            d["llmlab"] = self.extra
        return d

    @classmethod
    def from_hf(cls, d: dict, source: str = "config.json") -> "EncDecConfig":
        if d.get("model_type") != "t5":
            raise UserError(f"{source}: model_type '{d.get('model_type')}' is not t5")
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "extra"}
        return cls(**kw, extra=dict(d.get("llmlab", {})))


class T5Attention(nn.Module):
    """Multi-head attention without score scaling; self (k, v from x, optionally cached) or
    cross (k, v given: the encoder's, computed once)."""

    def __init__(self, c: EncDecConfig, has_bias: bool, bidirectional: bool):
        super().__init__()
        self.H, self.D = c.num_heads, c.d_kv
        inner = c.num_heads * c.d_kv
        self.q, self.k, self.v = (nn.Linear(c.d_model, inner, bias=False) for _ in range(3))
        self.o = nn.Linear(inner, c.d_model, bias=False)
        if has_bias:
            self.relative_attention_bias = T5Bias(c.num_heads, c.relative_attention_num_buckets,
                                                  c.relative_attention_max_distance, bidirectional)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.H, self.D).transpose(1, 2)

    def kv(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(self.k(states)), self.split(self.v(states))

    def forward(self, x, bias, kv=None, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """bias: float (B|1, H|1, T, S), -inf where hidden: position bias plus masks."""
        q = self.split(self.q(x))
        k, v = kv if kv is not None else self.kv(x)
        if kv is None and cache is not None:
            k, v = cache.update(layer, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0)
        return self.o(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.H * self.D))


class T5DenseAct(nn.Module):
    """wo(act(wi(x))), or gated wo(act(wi_0(x)) * wi_1(x)) (Shazeer 2020; T5 v1.1)."""

    def __init__(self, c: EncDecConfig):
        super().__init__()
        self.gated, act = FEED_FORWARD[c.feed_forward_proj]
        self.act = ACTIVATIONS[act]
        if self.gated:
            self.wi_0, self.wi_1 = nn.Linear(c.d_model, c.d_ff, bias=False), nn.Linear(c.d_model, c.d_ff, bias=False)
        else:
            self.wi = nn.Linear(c.d_model, c.d_ff, bias=False)
        self.wo = nn.Linear(c.d_ff, c.d_model, bias=False)

    def forward(self, x):
        h = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
        return self.wo(h)


class _Sub(nn.Module):
    """One residual sub-layer: x + f(norm(x)), named as HF (layer_norm + SelfAttention | EncDecAttention
    | DenseReluDense)."""

    def __init__(self, c: EncDecConfig, name: str, f: nn.Module):
        super().__init__()
        self.layer_norm = make_norm("rmsnorm", c.d_model, c.layer_norm_epsilon)
        setattr(self, name, f)


class EncDecBlock(nn.Module):
    def __init__(self, c: EncDecConfig, first: bool, decoder: bool):
        super().__init__()
        subs = [_Sub(c, "SelfAttention", T5Attention(c, first, bidirectional=not decoder))]
        if decoder:
            subs.append(_Sub(c, "EncDecAttention", T5Attention(c, False, False)))
        subs.append(_Sub(c, "DenseReluDense", T5DenseAct(c)))
        self.layer = nn.ModuleList(subs)

    def forward(self, x, self_bias, cross_kv=None, cross_bias=None, cache=None, i: int = 0):
        s = self.layer[0]
        x = x + s.SelfAttention(s.layer_norm(x), self_bias, cache=cache, layer=i)
        if cross_kv is not None:
            c = self.layer[1]
            x = x + c.EncDecAttention(c.layer_norm(x), cross_bias, kv=cross_kv)
        f = self.layer[-1]
        return x + f.DenseReluDense(f.layer_norm(x))


class _Stack(nn.Module):
    def __init__(self, c: EncDecConfig, n: int, decoder: bool):
        super().__init__()
        self.block = nn.ModuleList(EncDecBlock(c, i == 0, decoder) for i in range(n))
        self.final_layer_norm = make_norm("rmsnorm", c.d_model, c.layer_norm_epsilon)

    @property
    def position_bias(self) -> T5Bias:
        return self.block[0].layer[0].SelfAttention.relative_attention_bias


def _key_mask(mask: torch.Tensor | None, dtype) -> torch.Tensor | None:
    """(B, S) 1 = real -> additive (B, 1, 1, S) with -inf on padding."""
    if mask is None:
        return None
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask == 0, -math.inf)[:, None, None]


class EncDecCache:
    """The decoder's self-attention KV cache plus every layer's cross-attention K/V (set once)."""

    def __init__(self, model: "EncoderDecoder", batch: int, max_len: int):
        c, p = model.config, next(model.parameters())
        self.self_kv = KVCache(c.num_decoder_layers, batch, c.num_heads, max_len, c.d_kv, p.dtype, p.device)
        self.cross_kv: list | None = None

    @property
    def length(self) -> int:
        return self.self_kv.length


class EncoderDecoder(nn.Module):
    is_encoder_decoder = True

    def __init__(self, config: EncDecConfig):
        super().__init__()
        self.config = c = config
        self.shared = nn.Embedding(c.vocab_size, c.d_model)
        self.encoder = _Stack(c, c.num_layers, decoder=False)
        self.decoder = _Stack(c, c.num_decoder_layers, decoder=True)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.gradient_checkpointing = False
        self._init_weights()
        if c.tie_word_embeddings:
            self.lm_head.weight = self.shared.weight

    @torch.no_grad()
    def _init_weights(self) -> None:
        """T5's (Mesh TensorFlow) initialisation, which stands in for the missing 1/sqrt(d_kv)."""
        c, f = self.config, self.config.initializer_factor
        for name, p in self.named_parameters():
            if name.endswith("layer_norm.weight"):
                nn.init.ones_(p)
                continue
            std = {"q.weight": (c.d_model * c.d_kv) ** -0.5, "k.weight": c.d_model ** -0.5,
                   "v.weight": c.d_model ** -0.5, "o.weight": (c.num_heads * c.d_kv) ** -0.5,
                   "wo.weight": c.d_ff ** -0.5, "relative_attention_bias.weight": c.d_model ** -0.5,
                   "shared.weight": 1.0, "lm_head.weight": c.d_model ** -0.5}
            key = next((k for k in std if name.endswith(k)), None)
            nn.init.normal_(p, 0.0, f * (std[key] if key else c.d_model ** -0.5))  # wi, wi_0, wi_1: d^-1/2

    fused_ce_ok = True  # no head bias or soft-cap: the trainer's chunked LM-head + CE applies

    def aux_loss(self):
        return None

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S) -> encoder states (B, S, d); attention_mask 1 = real token, 0 = padding."""
        S = input_ids.shape[1]
        x = self.shared(input_ids)
        pos = torch.arange(S, device=x.device)[None]
        bias = self.encoder.position_bias(pos, pos).to(x.dtype)
        pad = _key_mask(attention_mask, x.dtype)
        bias = bias if pad is None else bias + pad
        for blk in self.encoder.block:
            x = self._run(blk, x, bias)
        return self.encoder.final_layer_norm(x)

    def decode(self, decoder_input_ids: torch.Tensor, encoder_states: torch.Tensor,
               attention_mask: torch.Tensor | None = None, cache: EncDecCache | None = None,
               return_hidden: bool = False) -> torch.Tensor:
        """Teacher-forced (or cached, one step at a time) decoder -> logits (B, T, V)."""
        B, T = decoder_input_ids.shape
        past = cache.length if cache is not None else 0
        x = self.shared(decoder_input_ids)
        q_pos = torch.arange(past, past + T, device=x.device)[None]
        k_pos = torch.arange(past + T, device=x.device)[None]
        bias = self.decoder.position_bias(q_pos, k_pos).to(x.dtype)
        bias = bias.masked_fill(k_pos[:, None, None, :] > q_pos[:, None, :, None], -math.inf)  # causal
        cross_bias = _key_mask(attention_mask, x.dtype)
        if cross_bias is None:
            cross_bias = x.new_zeros(1, 1, 1, encoder_states.shape[1])
        if cache is not None and cache.cross_kv is None:
            cache.cross_kv = [blk.layer[1].EncDecAttention.kv(encoder_states) for blk in self.decoder.block]
        for i, blk in enumerate(self.decoder.block):
            kv = cache.cross_kv[i] if cache is not None else blk.layer[1].EncDecAttention.kv(encoder_states)
            x = self._run(blk, x, bias, kv, cross_bias, cache.self_kv if cache is not None else None, i)
        if cache is not None:
            cache.self_kv.advance(T)
        x = self.decoder.final_layer_norm(x)
        if self.config.scale_decoder_outputs:  # T5 v1.0: rescale before the tied projection
            x = x * self.config.d_model ** -0.5
        return x if return_hidden else self.lm_head(x)

    def _run(self, blk, x, *args):
        if self.gradient_checkpointing and self.training and (len(args) < 4 or args[3] is None):
            return torch.utils.checkpoint.checkpoint(blk, x, *args, use_reentrant=False)
        return blk(x, *args)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None, return_hidden: bool = False, **_) -> torch.Tensor:
        """Training / scoring: encoder input (B, S), decoder input (B, T) -> logits (B, T, V)."""
        if decoder_input_ids is None:
            raise UserError("an encoder-decoder needs decoder_input_ids: train it with span_corruption, ul2 or "
                            "prefix_lm; generate with num_beams=1 (beam search is decoder-only)")
        enc = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, enc, attention_mask, return_hidden=return_hidden)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.shared.weight.numel() + (0 if self.config.tie_word_embeddings else self.lm_head.weight.numel())
        return n

    def stepper(self, prompt_ids: list[int], max_new_tokens: int):
        """The per-step forward `llmlab.infer.generate` drives: encode the prompt once; call with None
        for the first logits (after decoder_start), then with each step's token -> logits (1, V)."""
        dev = self.shared.weight.device
        enc = self.encode(torch.tensor([prompt_ids], device=dev))
        cache = EncDecCache(self, 1, max_new_tokens + 1)

        def forward(fed: list[int] | None) -> torch.Tensor:
            tok = [self.config.decoder_start_token_id] if fed is None else fed
            return self.decode(torch.tensor([tok], device=dev), enc, cache=cache)[:, -1]
        return forward


def flops_per_token(c: EncDecConfig, seq_len: int, training: bool = True) -> float:
    """6N per trained token with N the weights one token passes: an input token the encoder's, a
    target token the decoder's (and the head); counted as their mean, plus attention (Kaplan et al.)."""
    d, f, inner = c.d_model, c.d_ff, c.num_heads * c.d_kv
    mlp = (3 if FEED_FORWARD[c.feed_forward_proj][0] else 2) * d * f
    enc = c.num_layers * (4 * d * inner + mlp)
    dec = c.num_decoder_layers * (8 * d * inner + mlp) + d * c.vocab_size
    attn = (c.num_layers + 2 * c.num_decoder_layers) * inner * seq_len
    fwd = (enc + dec) + 4 * attn / 2
    return 3 * fwd if training else fwd
