"""Context (sequence) parallel training: each of c ranks holds a contiguous 1/c of every sequence
of the batch and attends over the whole sequence by ring attention (llmlab.distributed.ring_attention;
Liu et al. 2023). Everything but attention is per token, so it runs on the chunk as is.

    rank r: tokens [r T/c, (r+1) T/c) of each of the B sequences, positions offset by r T/c

All ranks read the same batch (one data stream) and slice their chunk. The loss on a rank is its
tokens' cross-entropy sum over the global token count, so the ranks' losses add up to the mean over
the whole batch; the ring's backward sends K/V gradients back to their owners, so after backward
each rank's gradient is its part of d(global loss)/dW, and an all-reduce SUM gives the full one.
Activation memory per rank falls by c (the chunk's activations; K/V of one other chunk in flight).

  torchrun --nproc_per_node 2 -m llmlab.cli train data=runs/data/tokens depth=2 strategy=cp
"""
from __future__ import annotations

import functools

import torch
import torch.distributed as dist
import torch.nn.functional as F

from llmlab.distributed.ring_attention import ring_attention
from llmlab.errors import UserError


def _ring_gqa(q, k, v, group=None):
    if k.shape[1] != q.shape[1]:  # GQA/MQA: each K/V head serves q_heads / kv_heads query heads
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return ring_attention(q, k, v, group)


def check(cfg, world: int, seq_len: int) -> None:
    """One line for a model or window that context parallel does not cover."""
    why = []
    if seq_len % world:
        why.append(f"max_length {seq_len} does not divide over {world} ranks")
    if cfg.position in ("alibi", "t5"):
        why.append(f"position={cfg.position} (a bias over the full score matrix)")
    for key in ("sliding_window", "global_tokens", "sparse_stride", "s2_group_size", "attn_logit_softcapping",
                "kv_lora_rank"):
        if getattr(cfg, key, None):
            why.append(f"{key}={getattr(cfg, key)}")
    if cfg.prefix_lm:
        why.append("prefix_lm")
    if cfg.num_local_experts:
        why.append("a MoE model (use strategy=ep)")
    if why:
        raise UserError("strategy=cp (ring attention) covers plain causal attention only: " + "; ".join(why))


def enable(model, group=None) -> None:
    """Route every attention layer of `model` through the ring over `group`."""
    from llmlab.model.attention import Attention
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    if len(layers) != len(model.model.layers):
        raise UserError("strategy=cp: this model's attention layers are not the plain `Attention`")
    for m in layers:
        m.context_parallel = functools.partial(_ring_gqa, group=group)


def shard(x: torch.Tensor, y: torch.Tensor, rank: int, world: int):
    """This rank's chunk of a (B, T) batch: (x, y, position ids)."""
    n = x.shape[1] // world
    lo = rank * n
    return x[:, lo:lo + n], y[:, lo:lo + n], torch.arange(lo, lo + n, device=x.device)


def chunk_loss(logits: torch.Tensor, y: torch.Tensor, group=None) -> torch.Tensor:
    """This chunk's cross-entropy sum over the valid tokens of the whole batch (all ranks)."""
    n = (y != -100).sum().float()
    dist.all_reduce(n, group=group)
    total = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")
    return total / n.clamp(min=1)


def sync_gradients(model, group=None) -> None:
    """Sum the ranks' partial gradients (each holds its part of d(global loss)/dW)."""
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, group=group)
