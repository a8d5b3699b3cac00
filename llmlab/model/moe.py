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
contiguous slice: a grouped GEMM (`_GroupedGLU`: the expert MLP's matmuls per expert on its rows,
MegaBlocks-style, no padding to capacity); outputs return, weighted, with index_add. No Python loop over
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

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.model.linear import dnn_linear, use_dnn
from llmlab.model.mlp import ACTIVATIONS, GatedMLP


DNN_MIN_ROWS = 512


def _act_grad(act, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad * act'(x): ATen's fused backward kernels where there is one, else autograd."""
    if act is F.silu:
        return torch.ops.aten.silu_backward(grad, x)
    if act is F.relu:
        return grad * (x > 0)
    if act is F.gelu or (isinstance(act, functools.partial) and act.func is F.gelu):
        return torch.ops.aten.gelu_backward(grad, x, approximate=getattr(act, "keywords", {}).get("approximate", "none"))
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(True)
        return torch.autograd.grad(act(x_), x_, grad)[0]


def _rows_by_weight(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (M, in) @ w.T for a (out, in) weight or a transposed view: oneDNN on an fp32 CPU (10-13 %
    faster than MKL for the expert shapes here at >= 512 rows, no faster at 256; llmlab.model.linear),
    else a plain matmul."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[0] >= DNN_MIN_ROWS and use_dnn():
        return dnn_linear(x, w)
    return x @ w.t()


class _GroupedGLU(torch.autograd.Function):
    """y[rows of e] = down_e(act(gate_e(x)) * up_e(x)) for x sorted by expert: the whole grouped
    expert MLP (MegaBlocks-style grouped GEMMs, no padding to capacity) in one autograd node.

    One node instead of grouped-linear -> chunk -> act -> mul -> grouped-linear: the (M, 2f)
    gate/up activations are never concatenated or split by autograd (their gradient is written
    in place, one expert at a time), every expert's weight gradient goes into one (E, out, in)
    tensor (autograd through `W[e]` builds a full-size zero gradient per expert: E^2 work), and the
    forward and input-gradient products go through oneDNN on CPU. The loop is over experts (E
    products), never over tokens."""

    @staticmethod
    def forward(ctx, x, w_gate_up, w_down, sizes, act):
        f = w_down.shape[2]
        y = x.new_empty(x.shape[0], w_down.shape[1])
        saved, start = [], 0
        for e, n in enumerate(sizes):
            if n:
                gu = _rows_by_weight(x[start:start + n], w_gate_up[e])
                a = act(gu[:, :f])
                h = a * gu[:, f:]
                y[start:start + n] = _rows_by_weight(h, w_down[e])
                saved += [gu, a, h]
                start += n
        ctx.save_for_backward(x, w_gate_up, w_down, *saved)
        ctx.sizes, ctx.act = sizes, act
        return y

    @staticmethod
    def backward(ctx, gy):
        x, w_gate_up, w_down, *saved = ctx.saved_tensors
        f = w_down.shape[2]
        gx = torch.empty_like(x)
        g_gate_up, g_down = torch.empty_like(w_gate_up), torch.empty_like(w_down)
        start, i = 0, 0
        for e, n in enumerate(ctx.sizes):
            if not n:
                g_gate_up[e].zero_()
                g_down[e].zero_()
                continue
            gu, a, h = saved[i:i + 3]
            i += 3
            g = gy[start:start + n]
            torch.mm(g.t(), h, out=g_down[e])
            gh = _rows_by_weight(g, w_down[e].t())
            gate, up = gu[:, :f], gu[:, f:]
            d_gu = torch.empty_like(gu)
            torch.mul(gh, a, out=d_gu[:, f:])
            d_gu[:, :f] = _act_grad(ctx.act, gh * up, gate)
            xs = x[start:start + n]
            torch.mm(d_gu.t(), xs, out=g_gate_up[e])
            gx[start:start + n] = _rows_by_weight(d_gu, w_gate_up[e].t())
            start += n
        return gx, g_gate_up, g_down, None, None


class Experts(nn.Module):
    def __init__(self, n: int, dim: int, hidden: int, act: str):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(n, 2 * hidden, dim))
        self.down_proj = nn.Parameter(torch.empty(n, dim, hidden))
        self.act = ACTIVATIONS[act]

    def forward(self, xs: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """xs (M, d) sorted by expert, sizes[e] rows for expert e -> (M, d)."""
        return _GroupedGLU.apply(xs, self.gate_up_proj, self.down_proj, sizes, self.act)


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


def load_balancing_loss(router_logits: list[torch.Tensor], E: int, k: int, reduce_f=None) -> torch.Tensor:
    """Switch / Mixtral: E * sum over slots and experts of f[slot, i] * P_i, over all layers' tokens.
    reduce_f: expert parallel's all-reduce of f over the ranks (llmlab.distributed.expert_parallel)."""
    logits = torch.cat(router_logits, 0).float()
    probs = logits.softmax(-1)
    _, idx = probs.topk(k, dim=-1)
    f = F.one_hot(idx, E).float().mean(0)  # (k, E): share of tokens whose slot s went to expert i
    if reduce_f is not None:
        f = reduce_f(f)
    return E * (f * probs.mean(0)[None]).sum()


def z_loss(router_logits: list[torch.Tensor]) -> torch.Tensor:
    logits = torch.cat(router_logits, 0).float()
    return torch.logsumexp(logits, dim=-1).pow(2).mean()
