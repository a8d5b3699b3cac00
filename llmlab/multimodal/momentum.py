"""Momentum distillation (ALBEF, Li et al. 2021; reused by BLIP, Li et al. 2022).

A momentum model is an exponential moving average of the online model,
    theta_m <- m * theta_m + (1 - m) * theta,      m = 0.995,
never trained by gradient. Its image-text similarities give soft pseudo-targets
    q_i2t = softmax(s * i_m T_m^T),  q_t2i = softmax(s * t_m I_m^T),
and the contrastive loss is trained against a mix of them with the one-hot pairs:
    L = (1 - alpha) * CE(p, y) + alpha * CE(p, q)   (both directions, averaged),
i.e. cross-entropy against the targets (1 - alpha) y + alpha q. Web captions are noisy and
many "negatives" in a batch are in fact good matches; the momentum model's softer targets stop
the online model from being punished for ranking them high. (ALBEF also keeps a queue of momentum
features as extra negatives; here the batch is the only source of negatives.)
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


def momentum_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of `model` to be moved by `ema_update`."""
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema.eval()


@torch.no_grad()
def ema_update(model: nn.Module, ema: nn.Module, momentum: float = 0.995) -> None:
    """theta_m <- m theta_m + (1 - m) theta, parameter by parameter (buffers copied)."""
    for p, q in zip(model.parameters(), ema.parameters()):
        q.mul_(momentum).add_(p.detach(), alpha=1 - momentum)
    for b, c in zip(model.buffers(), ema.buffers()):
        c.copy_(b)


@torch.no_grad()
def distill_targets(image_m: torch.Tensor, text_m: torch.Tensor, scale: torch.Tensor, alpha: float,
                    hard: torch.Tensor | None = None) -> torch.Tensor:
    """(N, N) targets (1 - alpha) * hard + alpha * softmax(s a_m b_m^T) for rows a (images for
    image->text, texts for text->image); `hard` defaults to the identity."""
    n = len(image_m)
    hard = torch.eye(n, device=image_m.device) if hard is None else hard
    return (1 - alpha) * hard + alpha * (scale * image_m @ text_m.t()).softmax(1)


def distilled_clip_loss(out: tuple, out_m: tuple, alpha: float, hard: torch.Tensor | None = None) -> torch.Tensor:
    """ALBEF's ITC with momentum distillation. out = (image, text, scale) of the online model,
    out_m the momentum model's on the same batch. alpha = 0 is plain CLIP InfoNCE."""
    img, txt, scale = out[:3]
    img_m, txt_m, scale_m = out_m[:3]
    n = len(img)
    hard = torch.eye(n, device=img.device) if hard is None else hard
    i2t = distill_targets(img_m, txt_m, scale_m, alpha, hard)
    t2i = distill_targets(txt_m, img_m, scale_m, alpha, hard.t())
    logits = scale * img @ txt.t()
    return (-(i2t * logits.log_softmax(1)).sum(1).mean() - (t2i * logits.t().log_softmax(1)).sum(1).mean()) / 2

