"""The model's forward pass over a paged KV cache: prefill one sequence, or decode many at once.

It runs the model's own modules (embed_tokens, layers.N.self_attn.q_proj, ..., lm_head) so any
checkpoint `llmlab.model` loads works here, but with q/k/v and gate/up fused into one matmul each
(fewer, larger kernels: decode on CPU is dominated by per-op overhead and weight reads).

Batch invariance. fp32 GEMM kernels pick different code paths for small row counts (on x86 with
2 threads: M in 1..3, 5..7, 9..11 give different last bits than a larger M), so a row's logits
could depend on how many other requests share the step, and a greedy argmax could flip. To make
a request's output independent of the batch, decode pads the row count up to a multiple of
`row_pad` (default 8, and at least 16 when the batch is larger than 8), where every row
is computed by the same kernel with the same reduction order; attention is computed per sequence
over exactly its own positions; prefill runs one sequence at a time with a chunk schedule that
depends only on that sequence. tests/test_infer_engine.py checks the result bit for bit.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from llmlab.infer.paged import BlockTable, PagedKVCache
from llmlab.model.rope import apply_rope


_FUSED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> fused weights (built once)


def fused_layers(model) -> list:
    """Per layer: (block, qkv weight, qkv bias, gate|up weight, gate|up bias, is_swiglu)."""
    if model in _FUSED:
        return _FUSED[model]
    layers = []
    with torch.no_grad():
        for blk in model.model.layers:
            a, m = blk.self_attn, blk.mlp
            qkv_w = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
            qkv_b = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]) if a.q_proj.bias is not None else None
            swiglu = hasattr(m, "gate_proj")
            if swiglu:
                up_w = torch.cat([m.gate_proj.weight, m.up_proj.weight])
                up_b = torch.cat([m.gate_proj.bias, m.up_proj.bias]) if m.up_proj.bias is not None else None
            else:
                up_w, up_b = m.up_proj.weight.detach(), (m.up_proj.bias.detach() if m.up_proj.bias is not None else None)
            layers.append((blk, qkv_w, qkv_b, up_w, up_b, swiglu))
    _FUSED[model] = layers
    return layers


class PagedRunner:
    def __init__(self, model, cache: PagedKVCache, row_pad: int = 8):
        self.model, self.cache, self.cfg = model, cache, model.config
        self.row_pad = row_pad
        self.device = next(model.parameters()).device
        self.H, self.Hkv, self.D = self.cfg.num_attention_heads, self.cfg.num_key_value_heads, self.cfg.head_dim
        self.layers = fused_layers(model)

    def _pos_embed(self, x, pos):
        if self.cfg.position == "learned":
            return x + self.model.model.embed_positions(pos), None
        return x, self.model.rope(pos, x.dtype)

    def _mlp(self, blk, h, up_w, up_b, swiglu):
        u = F.linear(h, up_w, up_b)
        if swiglu:
            g, u = u.chunk(2, dim=-1)
            u = F.silu(g) * u
        else:
            u = F.gelu(u, approximate="tanh")
        return blk.mlp.down_proj(u)

    def _qkv(self, h, qkv_w, qkv_b, rope):
        """h (B, T, d) -> q (B, H, T, D), k, v (B, Hkv, T, D) with RoPE applied."""
        B, T, _ = h.shape
        q, k, v = F.linear(h, qkv_w, qkv_b).split([self.H * self.D, self.Hkv * self.D, self.Hkv * self.D], -1)
        q = q.view(B, T, self.H, self.D).transpose(1, 2)
        k = k.view(B, T, self.Hkv, self.D).transpose(1, 2)
        v = v.view(B, T, self.Hkv, self.D).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def _head(self, x):
        return self.model.lm_head(self.model.model.norm(x))

    @torch.inference_mode()
    def prefill(self, table: BlockTable, tokens: list[int], all_logits: bool = False) -> torch.Tensor:
        """Append `tokens` to one sequence (space must be reserved) -> logits of the last position
        (V,), or of every position (T, V) with all_logits."""
        start, T = table.num_tokens, len(tokens)
        ids = torch.tensor([tokens], device=self.device)
        pos = torch.arange(start, start + T, device=self.device)
        x, rope = self._pos_embed(self.model.model.embed_tokens(ids), pos)
        slots = self.cache.slots(table, start, start + T).to(self.device)
        gqa = self.Hkv != self.H
        mask = None
        if start > 0:  # a chunk after cached positions: causal with an offset
            mask = torch.arange(start + T, device=self.device)[None] <= pos[:, None]
        for li, (blk, qkv_w, qkv_b, up_w, up_b, swiglu) in enumerate(self.layers):
            q, k, v = self._qkv(blk.input_layernorm(x), qkv_w, qkv_b, rope)
            self.cache.write(li, slots, k[0].transpose(0, 1), v[0].transpose(0, 1))
            if start > 0:
                k, v = self.cache.gather(li, table, start + T)
                k, v = k[None], v[None]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                               enable_gqa=gqa)
            x = x + blk.self_attn.o_proj(y.transpose(1, 2).reshape(1, T, self.H * self.D))
            x = x + self._mlp(blk, blk.post_attention_layernorm(x), up_w, up_b, swiglu)
        table.num_tokens += T
        if not all_logits:
            x = x[:, -1:]
        return self._head(x)[0] if all_logits else self._head(x)[0, -1]

    def padded_rows(self, n: int) -> int:
        if n <= self.row_pad:
            return self.row_pad
        return max(16, -(-n // self.row_pad) * self.row_pad)

    @torch.inference_mode()
    def decode(self, tables: list[BlockTable], tokens: list[int]) -> torch.Tensor:
        """One new token for each sequence (space must be reserved) -> logits (B, V)."""
        B = len(tables)
        Bp = self.padded_rows(B)
        lens = [t.num_tokens for t in tables]
        ids = torch.zeros(Bp, 1, dtype=torch.long, device=self.device)
        ids[:B, 0] = torch.tensor(tokens)
        pos = torch.zeros(Bp, 1, dtype=torch.long, device=self.device)
        pos[:B, 0] = torch.tensor(lens)
        x, rope = self._pos_embed(self.model.model.embed_tokens(ids), pos)
        slots = torch.cat([self.cache.slots(t, n, n + 1) for t, n in zip(tables, lens)]).to(self.device)
        gqa = self.Hkv != self.H
        y = torch.zeros(Bp, self.H, 1, self.D, dtype=x.dtype, device=self.device)
        for li, (blk, qkv_w, qkv_b, up_w, up_b, swiglu) in enumerate(self.layers):
            q, k, v = self._qkv(blk.input_layernorm(x), qkv_w, qkv_b, rope)
            self.cache.write(li, slots, k[:B, :, 0], v[:B, :, 0])
            for i, t in enumerate(tables):  # each sequence attends to exactly its own positions
                kk, vv = self.cache.gather(li, t, lens[i] + 1)
                y[i] = F.scaled_dot_product_attention(q[i:i + 1], kk[None], vv[None], enable_gqa=gqa)[0]
            x = x + blk.self_attn.o_proj(y.transpose(1, 2).reshape(Bp, 1, self.H * self.D))
            x = x + self._mlp(blk, blk.post_attention_layernorm(x), up_w, up_b, swiglu)
        for t in tables:
            t.num_tokens += 1
        return self._head(x)[:B, 0]
