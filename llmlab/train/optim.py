"""The optimizer of a run (`optim=adamw|adam|adamax|adafactor`) with the usual LLM split of weight decay.

adamw is torch's fused multi-tensor AdamW (Loshchilov & Hutter 2019); adam, adamax and adafactor
are the written-out ones of `llmlab.train.optimizers` (equal to their references, see there).

Decay shrinks weights toward 0 each step; for norm gains (which should stay near 1), biases and
embeddings (most rows get no gradient on a given step, so decay would erode rare tokens) it only
hurts, so GPT-2/nanoGPT/LLaMA recipes exclude them: matrices of the linear layers decay, the rest
does not. With tied embeddings the shared matrix counts as an embedding.
"""
from __future__ import annotations

import torch
from torch import nn

from llmlab.errors import UserError


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool = False) -> list[dict]:
    embeds = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():  # named_parameters yields a tied tensor once
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if decay_all or (p.dim() >= 2 and id(p) not in embeds):
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                    eps: float, decay_all: bool = False, optim: str = "adamw") -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay, decay_all)
    if optim != "adamw":
        from llmlab.train.optimizers import OPTIMIZERS
        if optim not in OPTIMIZERS:
            raise UserError(f"optim must be one of {sorted(OPTIMIZERS)}, got {optim!r}")
        if optim == "adafactor":  # the run's schedule sets lr (HF Trainer's choice): no relative step
            return OPTIMIZERS[optim](groups, lr=lr, relative_step=False, scale_parameter=False)
        return OPTIMIZERS[optim](groups, lr=lr, betas=betas, eps=eps)
    # foreach: one fused multi-tensor update; results equal the per-parameter loop bit for bit
    # is not guaranteed, so it is fixed here (resume determinism needs the same kernel each run)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)
