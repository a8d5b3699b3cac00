"""Context parallel: ring attention, readable (Liu et al. 2023, "Ring Attention with Blockwise
Transformers"; the blockwise softmax of Milakov & Gimelshein 2018 / FlashAttention).

The sequence is split in c contiguous chunks, one per rank. Each rank keeps its queries and passes
its keys/values around the ring; after c steps every query chunk has met every key chunk:

    step 0:  rank r attends its own K_r, V_r (causal inside the chunk)
    step s:  rank r receives K, V of rank r - s from rank r - 1 and sends what it had to r + 1;
             chunks from later ranks are skipped (causal), earlier ones are attended in full

Partial results merge with their log-sum-exp: lse = logaddexp(lse_a, lse_b),
o = o_a exp(lse_a - lse) + o_b exp(lse_b - lse), so the result equals softmax attention over the
whole sequence. Backward here is autograd through the ring (the pass's backward sends gradients
the other way round); production kernels recompute block by block instead of keeping every chunk.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist


def _ring_exchange(x: torch.Tensor, send_to: int, recv_from: int, group) -> torch.Tensor:
    out = torch.empty_like(x)
    ops = [dist.P2POp(dist.isend, x.contiguous(), send_to, group), dist.P2POp(dist.irecv, out, recv_from, group)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return out


class _RingPass(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        r, c = dist.get_rank(group), dist.get_world_size(group)
        ctx.group, ctx.r, ctx.c = group, r, c
        return _ring_exchange(x, (r + 1) % c, (r - 1) % c, group)

    @staticmethod
    def backward(ctx, g):  # the gradient goes back to where the tensor came from
        return _ring_exchange(g, (ctx.r - 1) % ctx.c, (ctx.r + 1) % ctx.c, ctx.group), None


def _block(q, k, v, causal: bool):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[-2]
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    lse = torch.logsumexp(s, dim=-1, keepdim=True)
    return torch.exp(s - lse) @ v, lse


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group=None) -> torch.Tensor:
    """Causal attention of this rank's query chunk (B, H, T/c, d) over the whole sequence, whose
    K/V chunks are spread over the ranks of `group` in order. Equals the matching rows of
    softmax(Q K^T / sqrt(d) + causal mask) V on the full sequence."""
    r, c = dist.get_rank(group), dist.get_world_size(group)
    out, lse = _block(q, k, v, causal=True)
    kv = torch.stack([k, v])
    for step in range(1, c):
        kv = _RingPass.apply(kv, group)
        if (r - step) % c < r:  # a chunk from earlier in the sequence: attended in full
            o_s, lse_s = _block(q, kv[0], kv[1], causal=False)
            new = torch.logaddexp(lse, lse_s)
            out = out * torch.exp(lse - new) + o_s * torch.exp(lse_s - new)
            lse = new
        else:  # a later chunk: masked out by causality, but kept in the graph (zero weight) so that
            out = out + 0.0 * kv.sum()  # every rank joins each pass's backward exchange in step
    return out
