"""Mixture-of-experts feed-forward (Shazeer et al. 2017; Switch, Fedus et al. 2021; Mixtral 2024;
DeepSeekMoE, Dai et al. 2024).

Router: logits = x W_r (E experts). Two orders:
- softmax_topk (Switch, Mixtral, DeepSeek): p = softmax(logits); keep the k largest p (renormalised to
  sum 1 when norm_topk_prob, as Mixtral, which makes it equal to the other order);
- topk_softmax (Shazeer 2017): keep the k largest logits, softmax over those k.
Dispatch by sort/gather: the N*k (token, expert) assignments are sorted by expert (stable: earlier
tokens first); each gets its rank within its expert; with a capacity C = ceil(capacity_factor * N *
k / E) (Switch) ranks >= C are dropped (the token keeps only its residual for that slot) and counted
in `self.dropped`. The kept rows are gathered in that order, so each expert's tokens are one
contiguous slice: a grouped GEMM (`GroupedLinear`: one matmul per expert on its rows, MegaBlocks-
style, no padding to capacity); outputs return, weighted, with index_add. No Python loop over
tokens. (A padded (E, C, d) buffer with two bmm's was 1.5x slower here on CPU.)
Losses (returned by `aux_loss`): Switch load balancing E * sum_i f_i P_i (f_i: share of assignments
to expert i per top-k slot, P_i: mean router probability, as HF computes it) and the ST-MoE router
z-loss mean(logsumexp(logits)^2) (Zoph et al. 2022).
Shared experts (DeepSeekMoE): one always-on GLU MLP of width n_shared * expert width, added to the
routed output. Fine-grained experts are the same module with more, narrower experts and larger k.
Weights as HF (transformers 5) Mixtral: mlp.gate.weight (E, d), mlp.experts.gate_up_proj (E, 2f, d),
mlp.experts.down_proj (E, d, f).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.model.mlp import ACTIVATIONS, GatedMLP


class GroupedLinear(torch.autograd.Function):
    """y[rows of expert e] = x[rows of e] @ W[e]^T for x sorted by expert (a grouped GEMM).

    Its own backward writes every expert's weight gradient into one (E, out, in) tensor; autograd
    through `W[e]` would instead build a full-size zero gradient per expert and add them up
    (E^2 work, ~10 % of a MoE layer here)."""

    @staticmethod
    def forward(ctx, x, w, sizes):
        y = x.new_empty(x.shape[0], w.shape[1])
        start = 0
        for e, n in enumerate(sizes):
            if n:
                torch.mm(x[start:start + n], w[e].t(), out=y[start:start + n])
                start += n
        ctx.save_for_backward(x, w)
        ctx.sizes = sizes
        return y

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        gx, gw = torch.empty_like(x), torch.zeros_like(w)
        start = 0
        for e, n in enumerate(ctx.sizes):
            if n:
                g = gy[start:start + n]
                torch.mm(g, w[e], out=gx[start:start + n])
                torch.mm(g.t(), x[start:start + n], out=gw[e])
                start += n
        return gx, gw, None


class Experts(nn.Module):
    def __init__(self, n: int, dim: int, hidden: int, act: str):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(n, 2 * hidden, dim))
        self.down_proj = nn.Parameter(torch.empty(n, dim, hidden))
        self.act = ACTIVATIONS[act]

    def forward(self, xs: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """xs (M, d) sorted by expert, sizes[e] rows for expert e -> (M, d)."""
        gate, up = GroupedLinear.apply(xs, self.gate_up_proj, sizes).chunk(2, dim=-1)
        return GroupedLinear.apply((self.act(gate) * up).contiguous(), self.down_proj, sizes)


class MoE(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, E = cfg.hidden_size, cfg.num_local_experts
        f = cfg.moe_intermediate_size or cfg.intermediate_size
        self.E, self.k, self.cfg = E, cfg.num_experts_per_tok, cfg
        self.gate = nn.Linear(d, E, bias=False)
        self.experts = Experts(E, d, f, cfg.hidden_act)
        if cfg.n_shared_experts:
            self.shared_experts = GatedMLP(d, f * cfg.n_shared_experts, False, cfg.hidden_act)
        self.router_logits: torch.Tensor | None = None  # of the last forward, for the losses
        self.dropped = 0  # assignments dropped by the capacity limit in the last forward
        self.counts: torch.Tensor | None = None  # assignments per expert in the last forward

    def route(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """logits (N, E) -> (weights (N, k), expert ids (N, k))."""
        if self.cfg.router_order == "topk_softmax":
            top, idx = logits.float().topk(self.k, dim=-1)
            return top.softmax(-1), idx
        w, idx = logits.float().softmax(-1).topk(self.k, dim=-1)
        if self.cfg.norm_topk_prob:
            w = w / w.sum(-1, keepdim=True)
        return w, idx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        N, E, k = x.shape[0], self.E, self.k
        logits = self.gate(x)
        self.router_logits = logits
        w, idx = self.route(logits)
        flat_e = idx.reshape(-1)  # assignment a = token a // k, slot a % k
        order = torch.argsort(flat_e, stable=True)
        e_sorted = flat_e[order]
        counts = torch.bincount(flat_e, minlength=E)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(N * k, device=x.device) - starts[e_sorted]  # position within its expert
        cap = math.ceil(self.cfg.capacity_factor * N * k / E) if self.cfg.capacity_factor > 0 else int(counts.max())
        keep = rank < cap
        self.counts, self.dropped = counts, int((~keep).sum())
        order, e_sorted, rank = order[keep], e_sorted[keep], rank[keep]
        tok = order // k
        out = self.experts(x[tok], counts.clamp(max=cap).tolist()) * w.reshape(-1)[order, None].to(x.dtype)
        y = torch.zeros_like(x).index_add_(0, tok, out)
        if self.cfg.n_shared_experts:
            y = y + self.shared_experts(x)
        return y.reshape(shape)


def load_balancing_loss(router_logits: list[torch.Tensor], E: int, k: int) -> torch.Tensor:
    """Switch / Mixtral: E * sum over slots and experts of f[slot, i] * P_i, over all layers' tokens."""
    logits = torch.cat(router_logits, 0).float()
    probs = logits.softmax(-1)
    _, idx = probs.topk(k, dim=-1)
    f = F.one_hot(idx, E).float().mean(0)  # (k, E): share of tokens whose slot s went to expert i
    return E * (f * probs.mean(0)[None]).sum()


def z_loss(router_logits: list[torch.Tensor]) -> torch.Tensor:
    logits = torch.cat(router_logits, 0).float()
    return torch.logsumexp(logits, dim=-1).pow(2).mean()
