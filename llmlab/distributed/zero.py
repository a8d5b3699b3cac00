"""ZeRO stages 1 and 2, readable (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward
Training Trillion Parameter Models", sec. 5.1-5.2).

Every rank keeps the full model (as DDP does) but owns one 1/N slice of each parameter group,
laid out flat:

    flat params   [ rank 0 | rank 1 | ... | rank N-1 ]   (params are views into it)
    Adam m, v     [ own slice only ]                      <- ZeRO-1: optimizer states / N
    gradients     reduce-scatter; ZeRO-1 keeps the full gradient buffers, ZeRO-2 frees all but its slice

One step: average the gradients with a reduce-scatter, clip by the global norm (sum of
the slices' squared norms, all-reduced), AdamW on the own slice, all-gather the updated slices
into every rank's flat params. Communication: reduce-scatter + all-gather = one all-reduce's
2 psi, the same as DDP. AdamW on a slice is elementwise, so the result equals one process's
AdamW up to the order of the gradient sums.

Simplification: the full flat gradient exists briefly after backward in both stages;
DeepSpeed's ZeRO-2 reduce-scatters bucket by bucket during backward so it never does.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from llmlab.errors import UserError
from llmlab.train.optim import param_groups


class _Group:
    """One parameter group flattened into one buffer padded to a multiple of the world size."""

    def __init__(self, params: list[nn.Parameter], rank: int, world: int):
        self.params = params
        n = sum(p.numel() for p in params)
        self.shard = -(-n // world)  # ceil
        self.flat = torch.zeros(self.shard * world, dtype=params[0].dtype, device=params[0].device)
        off = 0
        for p in params:  # params become views into the flat buffer: all-gather writes them in place
            k = p.numel()
            self.flat[off:off + k].copy_(p.data.flatten())
            p.data = self.flat[off:off + k].view_as(p)
            off += k
        self.numel, self.lo = n, rank * self.shard
        self.own = nn.Parameter(self.flat[self.lo:self.lo + self.shard])  # a view: updated in place

    def bind_grads(self) -> None:
        """ZeRO-1: zero the gradient buffer and make every p.grad a view into it."""
        self.grad_flat.zero_()
        off = 0
        for p in self.params:
            p.grad = self.grad_flat[off:off + p.numel()].view_as(p)
            off += p.numel()

    def flat_grad(self) -> torch.Tensor:
        g = torch.zeros_like(self.flat)
        off = 0
        for p in self.params:
            if p.grad is not None:
                g[off:off + p.numel()] = p.grad.flatten()
            off += p.numel()
        return g


class ZeroOptimizer:
    """AdamW with ZeRO stage 1 or 2 over `model` (already replicated identically on every rank)."""

    def __init__(self, model: nn.Module, stage: int, lr: float, weight_decay: float, betas, eps: float,
                 decay_all: bool = False):
        if stage not in (1, 2):
            raise UserError(f"ZeroOptimizer: stage must be 1 or 2 (ZeRO-3 is strategy=fsdp), got {stage}")
        self.stage = stage
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.groups = [_Group(g["params"], self.rank, self.world) for g in param_groups(model, weight_decay, decay_all)
                       if g["params"]]
        if stage == 1:
            for g in self.groups:  # one persistent full gradient buffer; backward accumulates into views of it
                g.grad_flat = torch.zeros_like(g.flat)
                g.bind_grads()
        wds = [g["weight_decay"] for g in param_groups(model, weight_decay, decay_all) if g["params"]]
        self.opt = torch.optim.AdamW([{"params": [g.own], "weight_decay": wd} for g, wd in zip(self.groups, wds)],
                                     lr=lr, betas=betas, eps=eps, foreach=True)
        self.param_groups = self.opt.param_groups

    def reduce_gradients(self) -> None:
        """Reduce-scatter the summed gradients: each rank gets the average of its own slice."""
        for g in self.groups:
            own = torch.empty(g.shard, dtype=g.flat.dtype, device=g.flat.device)
            dist.reduce_scatter_tensor(own, g.grad_flat if self.stage == 1 else g.flat_grad())
            own /= self.world
            if self.stage == 1:  # the slice lands in the full gradient buffer, which stays (DDP's memory)
                g.own.grad = g.grad_flat[g.lo:g.lo + g.shard]
                g.own.grad.copy_(own)
            else:  # ZeRO-2: only the own slice of the gradient survives
                g.own.grad = own
                for p in g.params:
                    p.grad = None

    def clip_grad_norm_(self, max_norm: float) -> float:
        sq = torch.stack([g.own.grad.float().pow(2).sum() for g in self.groups]).sum()
        dist.all_reduce(sq)
        norm = float(sq.sqrt())
        if max_norm > 0 and norm > max_norm:
            for g in self.groups:
                g.own.grad.mul_(max_norm / (norm + 1e-6))
        return norm

    @torch.no_grad()
    def step(self) -> None:
        self.opt.step()
        for g in self.groups:
            dist.all_gather_into_tensor(g.flat, g.own.detach().clone())

    def zero_grad(self) -> None:
        for g in self.groups:
            g.own.grad = None
            if self.stage == 1:
                g.bind_grads()
            else:
                for p in g.params:
                    p.grad = None

    def state_bytes(self) -> int:
        """Bytes of optimizer state and gradients this rank holds (for the memory check)."""
        n = sum(v.numel() * v.element_size() for st in self.opt.state.values() for v in st.values() if v.dim() > 0)
        n += sum(p.grad.numel() * p.grad.element_size() for g in self.groups for p in g.params if p.grad is not None)
        return n + sum(g.own.grad.numel() * g.own.grad.element_size() for g in self.groups if g.own.grad is not None)

    def state_dict(self) -> dict:
        return {"world_size": self.world, "stage": self.stage, "opt": self.opt.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        if sd["world_size"] != self.world:
            raise UserError(f"this ZeRO-{sd['stage']} checkpoint was saved by {sd['world_size']} ranks, now "
                            f"{self.world}: its optimizer slices are per rank; resume with "
                            f"{sd['world_size']} processes, or train with strategy=fsdp (DCP reshards)")
        self.opt.load_state_dict(sd["opt"])
