"""Sparse upcycling (Komatsuzaki et al. 2022, arXiv:2212.05055): turn a trained dense model into a
mixture of experts without starting over.

Every block's GLU MLP W = (gate, up, down) is copied into E experts and a fresh router W_r (E x d,
N(0, initializer_range)) is added. At initialisation every expert is the dense MLP, so
  MoE(x) = sum_{i in topk} w_i(x) MLP(x) = MLP(x)   whenever sum_i w_i = 1
(router_order=softmax_topk with norm_topk_prob, or topk_softmax): the upcycled model computes exactly
what the dense one did, and training continues from there. A consequence worth knowing: with
identical experts and weights summing to 1, the LM loss gives the router no gradient at step 0
(d out / d w_i is the same for every i); the router first moves through the load-balancing loss
(router_aux_loss_coef) and as the experts drift apart on the different tokens they see.
The result is an ordinary llmlab MoE Transformer (num_local_experts set): save_hf_dir / load_hf_dir
round-trip it like any other (tested).
"""
from __future__ import annotations

import torch

from llmlab.errors import UserError
from llmlab.model.mlp import GatedMLP


@torch.no_grad()
def upcycle(model, num_experts: int, experts_per_tok: int = 2, seed: int = 0,
            router_order: str = "softmax_topk"):
    """In place: every block's dense GLU MLP -> an MoE of `num_experts` copies + a fresh router."""
    from llmlab.model.moe import MoE
    cfg = model.config
    if cfg.num_local_experts:
        raise UserError("the model is already a mixture of experts")
    if not 1 <= experts_per_tok <= num_experts:
        raise UserError(f"experts_per_tok must be in 1..num_experts ({num_experts}), got {experts_per_tok}")
    if router_order not in ("softmax_topk", "topk_softmax"):
        raise UserError(f"router_order must be softmax_topk or topk_softmax, got {router_order}")
    if not all(isinstance(b.mlp, GatedMLP) and b.mlp.gate_proj.bias is None for b in model.model.layers):
        raise UserError("upcycling needs bias-free GLU MLPs (mlp=swiglu|geglu|reglu, mlp_bias=false)")
    cfg.num_local_experts, cfg.num_experts_per_tok = num_experts, experts_per_tok
    cfg.moe_intermediate_size, cfg.n_shared_experts = cfg.intermediate_size, 0
    cfg.router_order, cfg.norm_topk_prob = router_order, True
    gen = torch.Generator().manual_seed(seed)
    for block in model.model.layers:
        dense = block.mlp
        w = dense.gate_proj.weight
        moe = MoE(cfg).to(device=w.device, dtype=w.dtype)
        moe.experts.gate_up_proj.copy_(torch.cat([dense.gate_proj.weight, dense.up_proj.weight]).expand(
            num_experts, -1, -1))
        moe.experts.down_proj.copy_(dense.down_proj.weight.expand(num_experts, -1, -1))
        moe.gate.weight.copy_(torch.randn(moe.gate.weight.shape, generator=gen) * cfg.initializer_range)
        block.mlp = moe
    model.moe = True
    return model


@torch.no_grad()
def expert_copy_error(model) -> float:
    """Largest difference between any expert and expert 0 (0 right after upcycling)."""
    err = 0.0
    for block in model.model.layers:
        for p in (block.mlp.experts.gate_up_proj, block.mlp.experts.down_proj):
            err = max(err, float((p - p[:1]).abs().max()))
    return err

