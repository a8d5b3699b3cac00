"""FlashAttention in plain PyTorch (Dao et al. 2022; Dao 2023 for the loop order), for reading.

Forward: for each block of queries, walk the key blocks it may see (causal: those at or left of the
diagonal) keeping a running row max m, normaliser l and unnormalised output acc (online softmax,
Milakov & Gimelshein 2018):
    m' = max(m, rowmax(S)),  P = exp(S - m'),  l' = e^(m - m') l + rowsum(P),  acc' = e^(m - m') acc + P V
and finally O = acc / l, saving only O and the log-sum-exp L = m + log l per row: O(T) memory
instead of the (T, T) probabilities.
Backward (recomputing): with D = rowsum(dO * O), for each tile P = exp(S - L) is rebuilt and
    dV += P^T dO,  dP = dO V^T,  dS = P * (dP - D),  dQ += dS K * scale,  dK += dS^T Q * scale.
The tile loops are Python loops over blocks (T / block of them), not over tokens. On a GPU the real
kernel keeps tiles in SRAM; here the point is the algorithm and its O(T) memory.
"""
from __future__ import annotations

import math

import torch


def _tiles(T: int, block: int):
    return [(s, min(s + block, T)) for s in range(0, T, block)]


class FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal: bool, scale: float, block: int):
        """q, k, v (B, H, T, D) (k/v already expanded to H heads) -> O (B, H, T, D)."""
        B, H, T, D = q.shape
        S = k.shape[2]
        off = S - T  # queries are the last T positions (a cached prefix shifts the diagonal)
        out = torch.empty_like(q)
        lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
        for qs, qe in _tiles(T, block):
            qi = q[:, :, qs:qe].float() * scale
            m = torch.full((B, H, qe - qs, 1), -math.inf, device=q.device)
            ell = torch.zeros(B, H, qe - qs, 1, device=q.device)
            acc = torch.zeros(B, H, qe - qs, D, device=q.device)
            for ks, ke in _tiles(S, block):
                if causal and ks > qe - 1 + off:
                    break  # every later key block is in the future of every query of this block
                s = qi @ k[:, :, ks:ke].float().transpose(-1, -2)
                if causal and ke - 1 > qs + off:
                    i = torch.arange(qs, qe, device=q.device)[:, None] + off
                    j = torch.arange(ks, ke, device=q.device)[None, :]
                    s = s.masked_fill(j > i, -math.inf)
                m_new = torch.maximum(m, s.amax(-1, keepdim=True))
                p = torch.exp(s - m_new)
                corr = torch.exp(m - m_new)
                ell = corr * ell + p.sum(-1, keepdim=True)
                acc = corr * acc + p @ v[:, :, ks:ke].float()
                m = m_new
            out[:, :, qs:qe] = (acc / ell).to(q.dtype)
            lse[:, :, qs:qe] = (m + ell.log()).squeeze(-1)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale, ctx.block = causal, scale, block
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        causal, scale, block = ctx.causal, ctx.scale, ctx.block
        T, S = q.shape[2], k.shape[2]
        off = S - T
        dq = torch.zeros_like(q, dtype=torch.float32)
        dk = torch.zeros_like(k, dtype=torch.float32)
        dv = torch.zeros_like(v, dtype=torch.float32)
        delta = (dout.float() * out.float()).sum(-1, keepdim=True)  # D_i = rowsum(dO * O)
        for ks, ke in _tiles(S, block):
            kj, vj = k[:, :, ks:ke].float(), v[:, :, ks:ke].float()
            for qs, qe in _tiles(T, block):
                if causal and ks > qe - 1 + off:
                    continue
                qi, doi = q[:, :, qs:qe].float(), dout[:, :, qs:qe].float()
                s = (qi @ kj.transpose(-1, -2)) * scale
                if causal and ke - 1 > qs + off:
                    i = torch.arange(qs, qe, device=q.device)[:, None] + off
                    j = torch.arange(ks, ke, device=q.device)[None, :]
                    s = s.masked_fill(j > i, -math.inf)
                p = torch.exp(s - lse[:, :, qs:qe, None])  # the forward's probabilities, recomputed
                dv[:, :, ks:ke] += p.transpose(-1, -2) @ doi
                ds = p * (doi @ vj.transpose(-1, -2) - delta[:, :, qs:qe])
                dq[:, :, qs:qe] += (ds @ kj) * scale
                dk[:, :, ks:ke] += (ds.transpose(-1, -2) @ qi) * scale
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    scale: float | None = None, block: int = 128) -> torch.Tensor:
    """softmax(q k^T * scale [causal]) v without materialising the (T, S) matrix; GQA k/v
    (fewer heads) are expanded to q's heads first."""
    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return FlashAttention.apply(q, k, v, causal, scale, block)


def naive_attention(q, k, v, causal: bool = True, scale: float | None = None) -> torch.Tensor:
    """The textbook (T, S) version, for comparison: softmax(q k^T * scale + mask) v."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    if causal:
        T, S = q.shape[2], k.shape[2]
        s = s.masked_fill(torch.ones(T, S, dtype=torch.bool, device=q.device).triu(S - T + 1), -math.inf)
    return torch.softmax(s, dim=-1) @ v
