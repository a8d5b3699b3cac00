"""Pruning: zero (unstructured, N:M) or remove (structured) weights, then optionally recover.

Unstructured, per output row, keeping the largest scores (Frantar & Alistarh 2023 compare per row):
  magnitude   score = |W_ij|                                  (Han et al. 2015)
  wanda       score = |W_ij| * ||X_j||_2  over calibration tokens (Sun et al. 2023, arXiv:2306.11695):
              no weight update, the activation norm says which inputs matter
  owl         Wanda scores, but a sparsity per block from its outlier ratio (Yin et al. 2023, OWL,
              arXiv:2310.05175): D_l = share of the block's scores above M x their mean; blocks
              with more outliers keep more weights (`owl_sparsities`), mean sparsity unchanged
Semi-structured 2:4: in every group of 4 consecutive inputs keep the 2 best scores (NVIDIA sparse
tensor cores; Mishra et al. 2021), 50% sparsity.
Structured (the model gets smaller, no sparse kernel needed):
  heads       remove whole attention heads (KV groups kept whole: a query head goes with its
              group) by the L2 norm of their o_proj columns times their q rows
  channels    remove MLP intermediate channels by ||gate_j|| * ||up_j|| * ||down_:,j||
  layers      drop whole blocks (the ones whose output changes the residual stream least)
A pruned model is then fine-tuned briefly to recover (`llmlab prune ... recovery_steps=N`).
"""
from __future__ import annotations

import torch
from torch import nn

from llmlab.errors import UserError


def scores(w: torch.Tensor, method: str, act_norm: torch.Tensor | None = None) -> torch.Tensor:
    if method == "magnitude":
        return w.abs()
    if method == "wanda":
        if act_norm is None:
            raise UserError("wanda needs calibration activations")
        return w.abs() * act_norm[None, :]
    raise UserError(f"unknown pruning score '{method}' (magnitude or wanda)")


def unstructured_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask removing the `sparsity` fraction of lowest scores in every row."""
    if not 0 <= sparsity < 1:
        raise UserError(f"sparsity must be in [0, 1), got {sparsity}")
    k = int(score.shape[1] * sparsity)
    mask = torch.ones_like(score, dtype=torch.bool)
    if k:
        idx = score.topk(k, dim=1, largest=False).indices
        mask.scatter_(1, idx, False)
    return mask


def nm_mask(score: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep the n best of every m consecutive inputs."""
    rows, k = score.shape
    if k % m:
        raise UserError(f"{n}:{m} sparsity needs rows that are a multiple of {m}, got {k}")
    g = score.reshape(rows, k // m, m)
    keep = torch.zeros_like(g, dtype=torch.bool)
    keep.scatter_(2, g.topk(n, dim=2).indices, True)
    return keep.reshape(rows, k)


@torch.no_grad()
def prune_unstructured(model, sparsity: float = 0.5, method: str = "magnitude", pattern: str = "unstructured",
                       act_norms: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Zero weights of every block Linear in place; -> name -> keep-mask (for masked recovery)."""
    from llmlab.quant.calibrate import quantizable_linears
    masks = {}
    for name, m in quantizable_linears(model).items():
        sc = scores(m.weight, method, None if act_norms is None else act_norms[name])
        mask = nm_mask(sc) if pattern == "2:4" else unstructured_mask(sc, sparsity)
        m.weight.mul_(mask)
        masks[name] = mask
    return masks


def outlier_ratio(score_list: list[torch.Tensor], m: float) -> float:
    """OWL's layer-wise outlier distribution D_l: share of all the block's scores > m * their mean."""
    flat = torch.cat([sc.reshape(-1).float() for sc in score_list])
    return float((flat > m * flat.mean()).float().mean())


def owl_sparsities(ratios: list[float], sparsity: float, lam: float) -> list[float]:
    """Per-block sparsity S_l = 1 - K_l with the kept share K_l rescaled from D_l to
    [1 - S - lam, 1 - S + lam] (min-max over the blocks) and shifted so its mean is exactly 1 - S:
    K_l = 2 lam (D_l - min D) / (max D - min D);  K_l <- K_l - mean(K) + (1 - S)   (OWL's code)."""
    if not 0 <= lam or sparsity + lam >= 1 or sparsity - lam < 0:
        raise UserError(f"OWL needs 0 <= owl_lambda <= sparsity and sparsity + owl_lambda < 1 "
                        f"(got sparsity {sparsity}, owl_lambda {lam})")
    d = torch.tensor(ratios, dtype=torch.float64)
    spread = d.max() - d.min()
    keep = (d - d.min()) / spread * 2 * lam if spread > 0 else torch.zeros_like(d)
    keep = keep - keep.mean() + (1 - sparsity)
    return (1 - keep).tolist()


@torch.no_grad()
def prune_owl(model, sparsity: float, act_norms: dict[str, torch.Tensor], m: float = 5.0,
              lam: float = 0.08) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Wanda within each row, at the block's OWL sparsity; -> (keep-masks, per-block sparsities)."""
    import re

    from llmlab.quant.calibrate import quantizable_linears
    blocks: dict[int, dict[str, nn.Module]] = {}
    for name, mod in quantizable_linears(model).items():
        hit = re.search(r"layers\.(\d+)\.", name)
        if hit is None:
            raise UserError(f"OWL groups Linears by block; '{name}' is in none")
        blocks.setdefault(int(hit.group(1)), {})[name] = mod
    order = sorted(blocks)
    sc = {n: scores(mod.weight, "wanda", act_norms[n]) for i in order for n, mod in blocks[i].items()}
    ratios = [outlier_ratio([sc[n] for n in blocks[i]], m) for i in order]
    per_block = owl_sparsities(ratios, sparsity, lam)
    masks = {}
    for i, s_l in zip(order, per_block):
        for n, mod in blocks[i].items():
            masks[n] = unstructured_mask(sc[n], s_l)
            mod.weight.mul_(masks[n])
    return masks, per_block


def sparsity_of(model) -> float:
    from llmlab.quant.calibrate import quantizable_linears
    ws = [m.weight for m in quantizable_linears(model).values()]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def _keep_rows(lin: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    new = nn.Linear(lin.in_features, len(idx), bias=lin.bias is not None)
    new.weight.data = lin.weight.data[idx].clone()
    if lin.bias is not None:
        new.bias.data = lin.bias.data[idx].clone()
    return new


def _keep_cols(lin: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(idx), lin.out_features, bias=lin.bias is not None)
    new.weight.data = lin.weight.data[:, idx].clone()
    if lin.bias is not None:
        new.bias.data = lin.bias.data.clone()
    return new


@torch.no_grad()
def prune_channels(model, fraction: float) -> int:
    """Remove the `fraction` least important MLP intermediate channels of every block; -> new size."""
    cfg = model.config
    keep_n = max(1, round(cfg.intermediate_size * (1 - fraction)))
    for layer in model.model.layers:
        mlp = layer.mlp
        imp = mlp.gate_proj.weight.norm(dim=1) * mlp.up_proj.weight.norm(dim=1) * mlp.down_proj.weight.norm(dim=0)
        idx = imp.topk(keep_n).indices.sort().values
        mlp.gate_proj, mlp.up_proj = _keep_rows(mlp.gate_proj, idx), _keep_rows(mlp.up_proj, idx)
        mlp.down_proj = _keep_cols(mlp.down_proj, idx)
    cfg.intermediate_size = keep_n
    return keep_n


@torch.no_grad()
def prune_heads(model, fraction: float) -> int:
    """Remove the `fraction` least important KV groups (each with its query heads) in every block."""
    cfg = model.config
    hd, n_kv = cfg.head_dim, cfg.num_key_value_heads
    rep = cfg.num_attention_heads // n_kv
    keep_g = max(1, round(n_kv * (1 - fraction)))
    for layer in model.model.layers:
        at = layer.self_attn
        o = at.o_proj.weight.view(at.o_proj.out_features, n_kv, rep * hd)
        q = at.q_proj.weight.view(n_kv, rep * hd, -1)
        imp = o.norm(dim=(0, 2)) * q.norm(dim=(1, 2))
        groups = imp.topk(keep_g).indices.sort().values
        q_idx = torch.cat([torch.arange(g * rep * hd, (g + 1) * rep * hd) for g in groups.tolist()])
        kv_idx = torch.cat([torch.arange(g * hd, (g + 1) * hd) for g in groups.tolist()])
        at.q_proj, at.o_proj = _keep_rows(at.q_proj, q_idx), _keep_cols(at.o_proj, q_idx)
        at.k_proj, at.v_proj = _keep_rows(at.k_proj, kv_idx), _keep_rows(at.v_proj, kv_idx)
        at.n_heads, at.n_kv = keep_g * rep, keep_g
    cfg.num_attention_heads, cfg.num_key_value_heads = keep_g * rep, keep_g
    return keep_g * rep


@torch.no_grad()
def prune_layers(model, n_drop: int, windows: torch.Tensor) -> list[int]:
    """Drop the n blocks whose output is most similar (cosine) to their input on the windows
    (Men et al. 2024, ShortGPT's block influence); -> the dropped indices."""
    layers = model.model.layers
    if not 0 <= n_drop < len(layers):
        raise UserError(f"can drop 0..{len(layers) - 1} layers, not {n_drop}")
    sims = torch.zeros(len(layers))
    hooks = []
    for i, layer in enumerate(layers):
        def hook(mod, args, out, i=i):
            sims[i] += torch.nn.functional.cosine_similarity(args[0], out, dim=-1).mean()
        hooks.append(layer.register_forward_hook(hook))
    try:
        model(windows)
    finally:
        for h in hooks:
            h.remove()
    drop = sims.topk(n_drop).indices.sort().values.tolist()
    model.model.layers = nn.ModuleList(layer for i, layer in enumerate(layers) if i not in drop)
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = i
    model.config.num_hidden_layers = len(model.model.layers)
    return drop
