"""Expert parallel for the MoE layer (GShard, Lepikhin et al. 2020, sec. 3.2; Switch, Fedus et al.
2021, sec. 2.2; DeepSpeed-MoE, Rajbhandari et al. 2022).

P ranks each hold E/P of the E experts and their own shard of the batch (data parallel for
everything else). Per MoE layer, with the router replicated:

    route locally -> sort assignments by expert -> all_to_all (dispatch) -> local experts
                  -> all_to_all back (combine) -> weight and add, as the one-process layer

    rank 0: tokens t0..t3 ──┐  experts 0,1 on rank 0      ┌── outputs for t0..t3
    rank 1: tokens t4..t7 ──┴─ experts 2,3 on rank 1 ─────┴── outputs for t4..t7

Sorting by expert makes every destination rank's rows one contiguous slice (expert e lives on rank
e // (E/P)), so the dispatch is one `all_to_all_single` with uneven splits. A first, tiny all_to_all
of the per-expert counts tells each rank how many rows it receives from whom for each of its
experts; it regroups the received rows by local expert (a stable sort of their labels), runs the
grouped GEMM, undoes the regrouping and sends the rows back along the same splits. Backward of an
all_to_all is the all_to_all with the splits swapped.

Gradients: the experts on a rank see tokens from every rank, so after backward they already hold
the sum over ranks of d(rank loss)/dW; for the mean over ranks (what data parallel optimizes) they
are divided by P. Everything else (router, attention, embeddings, shared experts) is replicated and
averaged over ranks as in DDP. `sync_gradients` does both.

Capacity (Switch): applied per rank to its own tokens, as Switch and GShard do per device, so with
capacity_factor > 0 dropped tokens can differ from the one-process layer (which sees all tokens);
with capacity_factor = 0 (no dropping) the layer is equal to it.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from llmlab.errors import UserError
from llmlab.model.moe import MoE, Experts


class _AllToAll(torch.autograd.Function):
    """Rows x split by `in_splits` (one slice per rank) -> rows received, `out_splits` per rank."""

    @staticmethod
    def forward(ctx, x, out_splits, in_splits, group):
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty(sum(out_splits), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, g):
        out_splits, in_splits = ctx.splits
        gx = g.new_empty(sum(in_splits), *g.shape[1:])
        dist.all_to_all_single(gx, g.contiguous(), in_splits, out_splits, group=ctx.group)
        return gx, None, None, None


class ExpertParallelMoE(MoE):
    """A `MoE` whose experts are spread over the ranks of `group`; this rank keeps experts
    [rank * E/P, (rank + 1) * E/P). Same router, same weights, same outputs as the full layer."""

    def __init__(self, moe: MoE, group=None):
        nn.Module.__init__(self)
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        if moe.E % world:
            raise UserError(f"expert parallel: {moe.E} experts do not divide over {world} ranks")
        self.E, self.k, self.cfg, self.group = moe.E, moe.k, moe.cfg, group
        self.world, self.local = world, moe.E // world
        lo = rank * self.local
        self.gate = moe.gate
        full = moe.experts
        self.experts = Experts(self.local, full.gate_up_proj.shape[2], full.down_proj.shape[2], self.cfg.hidden_act)
        with torch.no_grad():
            self.experts.gate_up_proj.copy_(full.gate_up_proj[lo:lo + self.local])
            self.experts.down_proj.copy_(full.down_proj[lo:lo + self.local])
        self.experts.act = full.act
        if hasattr(moe, "shared_experts"):
            self.shared_experts = moe.shared_experts
        self.router_logits, self.dropped, self.counts = None, 0, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        N, E, k, P, L = x.shape[0], self.E, self.k, self.world, self.local
        logits = self.gate(x)
        self.router_logits = logits
        w, idx = self.route(logits)
        flat_e = idx.reshape(-1)
        order = torch.argsort(flat_e, stable=True)
        e_sorted = flat_e[order]
        counts = torch.bincount(flat_e, minlength=E)
        starts = torch.cumsum(counts, 0) - counts
        rank_in_expert = torch.arange(N * k, device=x.device) - starts[e_sorted]
        cap = math.ceil(self.cfg.capacity_factor * N * k / E) if self.cfg.capacity_factor > 0 else N * k
        keep = rank_in_expert < cap
        sent = counts.clamp(max=cap)
        self.counts, self.dropped = counts, int((~keep).sum())
        order = order[keep]
        tok = order // k
        # how many rows each rank sends to / receives from every other rank, per local expert
        recv = torch.empty_like(sent)
        dist.all_to_all_single(recv, sent, group=self.group)  # recv[src * L + e]: rows from src for my expert e
        recv = recv.view(P, L)
        send_splits = sent.view(P, L).sum(1).tolist()
        recv_splits = recv.sum(1).tolist()
        rows = _AllToAll.apply(x[tok], recv_splits, send_splits, self.group)
        # regroup the received rows (by source, then expert) by local expert for the grouped GEMM
        labels = torch.arange(L, device=x.device).repeat(P).repeat_interleave(recv.reshape(-1))
        perm = torch.argsort(labels, stable=True)
        ys = self.experts(rows[perm], recv.sum(0).tolist())
        ys = torch.empty_like(ys).index_copy(0, perm, ys)  # back to (source, expert) order
        out = _AllToAll.apply(ys, send_splits, recv_splits, self.group)
        out = out * w.reshape(-1)[order, None].to(x.dtype)
        y = torch.zeros_like(x).index_add_(0, tok, out)
        if self.cfg.n_shared_experts:
            y = y + self.shared_experts(x)
        return y.reshape(shape)


def expert_parallel(model: nn.Module, group=None) -> nn.Module:
    """Replace every `MoE` in `model` by its expert-parallel form, in place; returns the model."""
    def swap(module: nn.Module) -> int:
        n = 0
        for name, child in module.named_children():
            if isinstance(child, MoE) and not isinstance(child, ExpertParallelMoE):
                setattr(module, name, ExpertParallelMoE(child, group))
                n += 1
            else:
                n += swap(child)
        return n

    if not swap(model) and not any(isinstance(m, ExpertParallelMoE) for m in model.modules()):
        raise UserError("expert parallel needs a MoE model (num_local_experts > 0)")
    return model


def sync_gradients(model: nn.Module, group=None) -> None:
    """After backward: local experts' gradients / P (they hold the sum over ranks), every other
    gradient all-reduced and averaged over the ranks (data parallel)."""
    world = dist.get_world_size(group)
    expert_params = {id(p) for m in model.modules() if isinstance(m, ExpertParallelMoE) for p in m.experts.parameters()}
    for p in model.parameters():
        if p.grad is None:
            continue
        if id(p) in expert_params:
            p.grad /= world
        else:
            dist.all_reduce(p.grad, group=group)
            p.grad /= world


def _expert_names(model: nn.Module) -> set[str]:
    ep = {id(p) for m in model.modules() if isinstance(m, ExpertParallelMoE) for p in m.experts.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ep}


def clip_grad_norm_(model: nn.Module, max_norm: float, group=None) -> float:
    """Global gradient norm after `sync_gradients` (replicated gradients once, every rank's expert
    slice), and clipping to max_norm (0: measure only); the same factor on every rank."""
    local = _expert_names(model)
    sq = {True: torch.zeros((), dtype=torch.float64), False: torch.zeros((), dtype=torch.float64)}
    for n, p in model.named_parameters():
        if p.grad is not None:
            sq[n in local] += p.grad.double().pow(2).sum().cpu()
    dist.all_reduce(sq[True], group=group)
    norm = float((sq[True] + sq[False]).sqrt())
    if max_norm > 0 and norm > max_norm:
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(max_norm / (norm + 1e-6))
    return norm


def state_dicts(model: nn.Module, opt, group=None) -> tuple[dict, dict]:
    """Model and optimizer state for a DCP checkpoint: replicated weights under their names, this
    rank's expert slices and Adam states under per-rank keys (they differ by rank)."""
    rank, local = dist.get_rank(group), _expert_names(model)
    msd = {(f"{k}@rank{rank}" if k in local else k): v for k, v in model.state_dict().items()}
    return msd, {f"rank{rank}": {str(k): v for k, v in opt.state_dict()["state"].items()}}


def load_state_dicts(model: nn.Module, opt, msd: dict, osd: dict, group=None) -> None:
    """Inverse of `state_dicts` after DCP filled them (same world size)."""
    rank = dist.get_rank(group)
    model.load_state_dict({k.split("@rank")[0]: v for k, v in msd.items()})
    own = {int(k): v for k, v in osd[f"rank{rank}"].items()}
    opt.load_state_dict({"state": own, "param_groups": opt.state_dict()["param_groups"]})


def full_state_dict(model: nn.Module, group=None) -> dict:
    """The one-process state dict: every expert weight gathered from the ranks (rank order = expert
    order). A collective."""
    local, world = _expert_names(model), dist.get_world_size(group)
    out = {}
    for k, v in model.state_dict().items():
        if k in local:
            parts = [torch.empty_like(v) for _ in range(world)]
            dist.all_gather(parts, v.contiguous(), group=group)
            v = torch.cat(parts, 0)
        out[k] = v
    return out


def global_balance_f(model: nn.Module, group=None):
    """Patch the model's Switch load-balancing loss to use the expert shares f_i of all ranks'
    tokens (all-reduced, no gradient) with this rank's mean router probabilities P_i: averaged over
    the ranks as data parallel does, its value and gradient are those of the one-process loss
    E sum_i f_i P_i over the global batch (equal tokens per rank). Returns the model."""
    world = dist.get_world_size(group)

    def reduce_f(f: torch.Tensor) -> torch.Tensor:
        f = f.detach().clone()
        dist.all_reduce(f, group=group)
        return f / world
    model.balance_f_reduce = reduce_f
    return model
