"""Tensor parallel, readable (Shoeybi et al. 2019, Megatron-LM, sec. 3), with sequence parallel
(Korthikanti et al. 2022, sec. 4.2.2).

A Transformer block's two matmul pairs are split so each needs one all-reduce forward and one
backward. MLP: Y = GeLU(X A), Z = Y B with A split by columns and B by rows; attention: the heads
split across ranks (Q, K, V by columns, the output projection by rows):

          X ──f──┬── X A_1 ── act ── . B_1 ──┐
                 └── X A_2 ── act ── . B_2 ──┴─ g ── Z        (t = 2 ranks)

    f: forward identity, backward all-reduce     g: forward all-reduce, backward identity

Sequence parallel keeps the norm/residual regions split along the sequence instead of
replicated: f becomes an all-gather over the sequence (backward reduce-scatter) and g a
reduce-scatter (backward all-gather); same bytes on the wire, activations of those regions / t.
The norm weights then see only 1/t of the tokens, so their gradients are all-reduced (a hook).
Vocab parallel: the embedding rows (and the tied LM head) split by vocabulary range; the
cross-entropy is computed from the local logits with three all-reduces (max, sum of exp, target
logit) and never gathers the (tokens x vocab) logits.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from llmlab.errors import UserError


def _identity(x: torch.Tensor, group) -> torch.Tensor:
    return x


def _all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    x = x.clone()
    dist.all_reduce(x, group=group)
    return x


def _gather_seq(x: torch.Tensor, group) -> torch.Tensor:
    """All-gather along dim 1 (the sequence)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=1)


def _scatter_seq(x: torch.Tensor, group) -> torch.Tensor:
    """Reduce-scatter along dim 1 (the sequence)."""
    t = dist.get_world_size(group)
    parts = [p.contiguous() for p in x.chunk(t, dim=1)]
    out = torch.empty_like(parts[0])
    dist.reduce_scatter(out, parts, group=group)
    return out


class _Collective(torch.autograd.Function):
    """One collective forward and its adjoint backward: f, g and their sequence-parallel forms."""

    @staticmethod
    def forward(ctx, x, group, fwd, bwd):
        ctx.group, ctx.bwd = group, bwd
        return fwd(x, group)

    @staticmethod
    def backward(ctx, g):
        return ctx.bwd(g, ctx.group), None, None, None


# (forward, backward) of f and g (see the module docstring), plain and sequence-parallel
_F, _G = (_identity, _all_reduce), (_all_reduce, _identity)
_SP_F, _SP_G = (_gather_seq, _scatter_seq), (_scatter_seq, _gather_seq)


def enter(x, group, sp: bool):
    return _Collective.apply(x, group, *(_SP_F if sp else _F))


def leave(x, group, sp: bool):
    return _Collective.apply(x, group, *(_SP_G if sp else _G))


def _split(w: torch.Tensor, dim: int, rank: int, t: int) -> nn.Parameter:
    return nn.Parameter(w.detach().chunk(t, dim=dim)[rank].clone())


class TPRegion(nn.Module):
    """f -> inner (column-split in-projections, row-split out-projection) -> g."""

    def __init__(self, inner: nn.Module, group, sp: bool):
        super().__init__()
        self.inner, self.group, self.sp = inner, group, sp

    def forward(self, x, *args, **kw):
        return leave(self.inner(enter(x, self.group, self.sp), *args, **kw), self.group, self.sp)


class VocabParallelEmbedding(nn.Module):
    def __init__(self, weight: torch.Tensor, group, sp: bool):
        super().__init__()
        rank, t = dist.get_rank(group), dist.get_world_size(group)
        self.group, self.sp = group, sp
        self.per = weight.shape[0] // t
        self.lo = rank * self.per
        self.weight = _split(weight, 0, rank, t)

    def forward(self, ids):
        local = ids - self.lo
        outside = (local < 0) | (local >= self.per)
        x = F.embedding(local.masked_fill(outside, 0), self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return leave(x, self.group, self.sp)  # each token's row lives on exactly one rank


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, lo, group):
        """logits (N, V/t) local columns [lo, lo + V/t); labels (N,) global ids; mean loss."""
        m = logits.max(-1).values
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        e = (logits - m.unsqueeze(-1)).exp()
        s = e.sum(-1)
        dist.all_reduce(s, group=group)
        local = labels - lo
        mine = (local >= 0) & (local < logits.shape[-1])
        idx = local.clamp(0, logits.shape[-1] - 1)
        target = torch.where(mine, logits.gather(-1, idx.unsqueeze(-1)).squeeze(-1), torch.zeros_like(m))
        dist.all_reduce(target, group=group)
        ctx.save_for_backward(e / s.unsqueeze(-1), idx, mine)
        return (s.log() + m - target).mean()

    @staticmethod
    def backward(ctx, g):
        p, idx, mine = ctx.saved_tensors
        grad = p.clone()
        grad[torch.arange(len(idx)), idx] -= mine.to(p.dtype)
        return grad * (g / len(idx)), None, None, None


def vocab_parallel_cross_entropy(logits, labels, lo: int, group=None) -> torch.Tensor:
    return _VocabParallelCE.apply(logits, labels, lo, group)


def _shard_attention(attn, rank: int, t: int):
    if attn.q_proj.bias is not None or attn.n_heads % t or attn.n_kv % t:
        raise UserError(f"tensor parallel size {t} must divide the {attn.n_heads} attention heads and "
                        f"{attn.n_kv} KV heads (and the projections must have no bias)")
    for name in ("q_proj", "k_proj", "v_proj"):
        getattr(attn, name).weight = _split(getattr(attn, name).weight, 0, rank, t)
    attn.o_proj.weight = _split(attn.o_proj.weight, 1, rank, t)
    attn.n_heads, attn.n_kv = attn.n_heads // t, attn.n_kv // t


def _shard_mlp(mlp, rank: int, t: int):
    if getattr(mlp.down_proj, "bias", None) is not None or mlp.down_proj.in_features % t:
        raise UserError(f"tensor parallel size {t} must divide the MLP width {mlp.down_proj.in_features}")
    for name in ("gate_proj", "up_proj"):
        if hasattr(mlp, name):
            getattr(mlp, name).weight = _split(getattr(mlp, name).weight, 0, rank, t)
    mlp.down_proj.weight = _split(mlp.down_proj.weight, 1, rank, t)


class TensorParallelLM(nn.Module):
    """An llmlab Transformer split over the ranks of `group` (Megatron TP, optional SP).
    forward(ids, labels) -> mean cross-entropy (vocab-parallel)."""

    def __init__(self, model, group=None, sequence_parallel: bool = False):
        super().__init__()
        rank, t = dist.get_rank(group), dist.get_world_size(group)
        c = model.config
        if c.vocab_size % t:
            raise UserError(f"tensor parallel size {t} must divide vocab_size {c.vocab_size}")
        if not c.tie_word_embeddings:
            raise UserError("this readable TP version shares the vocab-parallel embedding with the LM head: "
                            "tie_word_embeddings must be true")
        self.group, self.sp, self.t = group, sequence_parallel, t
        self.model = model
        for block in model.model.layers:
            _shard_attention(block.self_attn, rank, t)
            _shard_mlp(block.mlp, rank, t)
            block.self_attn = TPRegion(block.self_attn, group, sequence_parallel)
            block.mlp = TPRegion(block.mlp, group, sequence_parallel)
        emb = VocabParallelEmbedding(model.model.embed_tokens.weight, group, sequence_parallel)
        model.model.embed_tokens = emb
        model.lm_head.weight = emb.weight
        if sequence_parallel:  # norms see only this rank's tokens: sum their gradients over the group
            sharded = {id(p) for n, p in model.named_parameters() if ".inner." in n or p is emb.weight}
            for p in model.parameters():
                if id(p) not in sharded:
                    p.register_hook(lambda g: _all_reduce(g, group))

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.sp and ids.shape[1] % self.t:
            raise UserError(f"sequence parallel: sequence length {ids.shape[1]} not divisible by {self.t}")
        h = self.model(ids, return_hidden=True)  # (B, T/t, d) under SP: the final norm ran on the shard
        h = enter(h, self.group, self.sp)
        logits = F.linear(h, self.model.lm_head.weight)
        return vocab_parallel_cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                                            self.model.model.embed_tokens.lo, self.group)
