"""Contrastive image-text losses.

CLIP (Radford et al. 2021): image and text features L2-normalised, logits s * I T^T with a
learnable temperature s = exp(t) (t initialised to log(1/0.07), s clamped to <= 100), and the
symmetric InfoNCE loss  (CE(logits, diag) + CE(logits^T, diag)) / 2.

SigLIP (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training"): every pair is its own
binary problem,  L = -1/N sum_ij log sigmoid(z_ij (s x_i.y_j + b)),  z_ij = +1 on the diagonal and
-1 elsewhere, with learnable s = exp(t) (t = log 10) and bias b = -10 at init (the prior says most
pairs are negatives). No softmax over the batch, so no all-gather is needed: in the "chunked"
form each rank scores its images against its own texts, then passes its text features to the next
rank around a ring (world - 1 times), adding negatives-only terms. The sum over ranks equals the
single-process loss on the whole batch; `NeighbourExchange` also passes gradients back around the
ring, so the gradients match too (tests/test_multimodal_clip.py, 2 gloo processes).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

CLIP_INIT_LOGIT_SCALE = math.log(1 / 0.07)
CLIP_MAX_LOGIT_SCALE = math.log(100.0)
SIGLIP_INIT_LOGIT_SCALE, SIGLIP_INIT_BIAS = math.log(10.0), -10.0


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              targets: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE; features already normalised, `logit_scale` already exponentiated
    (open_clip's ClipLoss convention). `targets` (N, N), rows summing to 1, replaces the one-hot
    diagonal: `caption_targets` (identical captions are positives, not false negatives) or
    momentum-distilled soft targets (ALBEF/BLIP, multimodal/momentum.py)."""
    logits = logit_scale * image_features @ text_features.t()
    if targets is None:
        targets = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets.t())) / 2


def caption_targets(captions: list[str]) -> torch.Tensor:
    """(N, N) targets spreading each row's mass evenly over the pairs with the same caption. With
    few distinct captions (easy-vqa has 24 "a <colour> <shape>") a batch of 64 holds many
    identical ones, and the one-hot InfoNCE would push an image away from its own caption."""
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    g = torch.tensor([ids[c] for c in captions])
    same = (g.unsqueeze(0) == g.unsqueeze(1)).float()
    return same / same.sum(1, keepdim=True)


def _sigmoid_terms(img, txt, scale, bias, positives: bool | torch.Tensor) -> torch.Tensor:
    logits = scale * img @ txt.t() + bias
    z = -torch.ones_like(logits)
    if isinstance(positives, torch.Tensor):
        z += 2 * positives.to(logits.dtype)
    elif positives:
        z += 2 * torch.eye(len(img), len(txt), device=logits.device, dtype=logits.dtype)
    return -F.logsigmoid(z * logits).sum()


def siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise sigmoid loss, summed over all pairs and divided by the batch size (as the paper
    and open_clip's SigLipLoss); `logit_scale` already exponentiated. `targets` > 0 marks extra
    positive pairs (identical captions), else the diagonal."""
    pos = True if targets is None else targets > 0
    return _sigmoid_terms(image_features, text_features, logit_scale, logit_bias, pos) / len(image_features)


class NeighbourExchange(torch.autograd.Function):
    """Send x to rank+1 and receive rank-1's tensor; backward sends the gradient the other way."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        return _exchange(x.contiguous(), (ctx.rank + 1) % ctx.world, (ctx.rank - 1) % ctx.world)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _exchange(grad.contiguous(), (ctx.rank - 1) % ctx.world, (ctx.rank + 1) % ctx.world)


def _exchange(x: torch.Tensor, to_rank: int, from_rank: int) -> torch.Tensor:
    out = torch.empty_like(x)
    ops = [dist.P2POp(dist.isend, x, to_rank), dist.P2POp(dist.irecv, out, from_rank)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return out


def siglip_loss_ring(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                     logit_bias: torch.Tensor) -> torch.Tensor:
    """This rank's share of the chunked SigLIP loss over world_size ranks, each holding a local
    batch of n pairs: (own pairs + negatives against every other rank's texts) / (n * world).
    Summed over ranks (all_reduce) it equals `siglip_loss` on the concatenated batch; so does its
    gradient, with no all-gather of features (memory O(n^2) per rank, not O(N^2))."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    total = _sigmoid_terms(image_features, text_features, logit_scale, logit_bias, True)
    txt = text_features
    for _ in range(world - 1):
        txt = NeighbourExchange.apply(txt)
        total = total + _sigmoid_terms(image_features, txt, logit_scale, logit_bias, False)
    return total / (len(image_features) * world)
