"""Random-routed experts (RRE; PanGu-Sigma, Ren et al. 2023, arXiv:2303.10845 §3.1): an MoE with no
learned gate. Routing is two-level: a token goes to the expert group of its *domain* (given with
the batch), then to one expert of that group by a fixed random table token_id -> expert, drawn once
from a seed. The bottom layers stay dense and shared; the top `sparse_layers` are routed, each
expert initialised as a copy of the dense MLP (PanGu-Sigma was extended from PanGu-alpha this way).
Because a domain's tokens only ever touch that domain's experts, `extract_domain` cuts a smaller
dense-sized sub-model that computes exactly what the full model computes on that domain.

Usage: `random_route(model, num_domains=2, experts_per_domain=2, sparse_layers=1)`, then
`set_domain(model, d)` before a forward. The token ids reach the layers through a forward
pre-hook on the model (the MoE itself only sees hidden states). In-memory only: an RRE model is
not a Mixtral checkpoint (save the sub-models, or the table and experts with torch.save).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from llmlab.errors import UserError
from llmlab.model.mlp import GatedMLP
from llmlab.model.moe import Experts


class RandomRoutedExperts(nn.Module):
    def __init__(self, dense: GatedMLP, table: torch.Tensor, experts_per_domain: int):
        """table (num_domains, vocab) long: the expert (0..experts_per_domain-1) of each token per domain."""
        super().__init__()
        n = table.shape[0] * experts_per_domain
        f, d = dense.gate_proj.weight.shape
        self.experts = Experts(n, d, f, dense.act_name)
        with torch.no_grad():
            self.experts.gate_up_proj.copy_(torch.cat([dense.gate_proj.weight, dense.up_proj.weight]).expand(n, -1, -1))
            self.experts.down_proj.copy_(dense.down_proj.weight.expand(n, -1, -1))
        self.register_buffer("table", table)
        self.per_domain = experts_per_domain
        self.token_ids: torch.Tensor | None = None  # set by the model's pre-hook
        self.domain = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        ids = self.token_ids[:, -shape[1]:].reshape(-1) if self.token_ids is not None else None
        if ids is None or ids.numel() != x.shape[0]:
            raise UserError("random-routed experts need the token ids: call the model on input_ids")
        expert = self.domain * self.per_domain + self.table[self.domain, ids]
        order = torch.argsort(expert, stable=True)
        sizes = torch.bincount(expert, minlength=self.experts.gate_up_proj.shape[0]).tolist()
        y = torch.empty_like(x)
        y[order] = self.experts(x[order], sizes)
        return y.reshape(shape)


def _routed(model) -> list[RandomRoutedExperts]:
    return [b.mlp for b in model.model.layers if isinstance(b.mlp, RandomRoutedExperts)]


def _remember_ids(model, args, kwargs):
    ids = args[0] if args else kwargs["input_ids"]
    for m in _routed(model):
        m.token_ids = ids


@torch.no_grad()
def random_route(model, num_domains: int, experts_per_domain: int, sparse_layers: int, seed: int = 0):
    """In place: the top `sparse_layers` dense GLU MLPs -> random-routed experts (copies of the MLP)."""
    layers = model.model.layers
    if not 1 <= sparse_layers <= len(layers) or num_domains < 1 or experts_per_domain < 1:
        raise UserError(f"need 1 <= sparse_layers <= {len(layers)}, num_domains >= 1, experts_per_domain >= 1")
    gen = torch.Generator().manual_seed(seed)
    for block in layers[len(layers) - sparse_layers:]:
        if not isinstance(block.mlp, GatedMLP) or block.mlp.gate_proj.bias is not None:
            raise UserError("random routing needs bias-free GLU MLPs (mlp=swiglu|geglu|reglu)")
        table = torch.randint(0, experts_per_domain, (num_domains, model.config.vocab_size), generator=gen)
        block.mlp = RandomRoutedExperts(block.mlp, table.to(block.mlp.gate_proj.weight.device), experts_per_domain)
    model.register_forward_pre_hook(_remember_ids, with_kwargs=True)
    return model


def set_domain(model, domain: int) -> None:
    for m in _routed(model):
        if not 0 <= domain < m.table.shape[0]:
            raise UserError(f"domain must be in 0..{m.table.shape[0] - 1}, got {domain}")
        m.domain = domain


@torch.no_grad()
def extract_domain(model, domain: int):
    """A copy keeping only `domain`'s experts in every routed layer (one domain, same outputs on it)."""
    set_domain(model, domain)
    sub = copy.deepcopy(model)
    for m in _routed(sub):
        keep = slice(domain * m.per_domain, (domain + 1) * m.per_domain)
        ex = m.experts
        ex.gate_up_proj = nn.Parameter(ex.gate_up_proj[keep].clone())
        ex.down_proj = nn.Parameter(ex.down_proj[keep].clone())
        m.table = m.table[domain:domain + 1].clone()
        m.domain, m.token_ids = 0, None
    return sub
