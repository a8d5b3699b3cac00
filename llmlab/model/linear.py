"""nn.Linear's training forward/backward on oneDNN, where that is faster (CPU, fp32).

Why: torch sends an fp32 `F.linear` on x86 CPUs to MKL's sgemm, which can take a narrower SIMD
path than oneDNN (also inside torch) on the same CPU; the measured products are in docs/LOG.md
and docs/train.md. The weight gradient dW = dY^T X stays on MKL (oneDNN needs both operands
transposed and copied there, and was slower).

`linear(module, x)` takes this path only for a plain `nn.Linear` without hooks, fp32 on CPU,
outside autocast, with autograd recording and at least MIN_ROWS rows, not inside torch.compile
(inductor cannot lower the oneDNN op; it picks its own GEMM), and only when oneDNN is in the torch build (LLMLAB_NO_DNN=1 turns it off); everything else (LoRA/adapter layers, GPUs,
bf16, inference) calls the module as usual. The product is the same x W^T + b; only the order of the fp32 sums differs from MKL's.
"""
from __future__ import annotations

import torch
from torch import nn

from llmlab.device import use_onednn

MIN_ROWS = 64


def use_dnn() -> bool:
    """oneDNN's fp32 linear is usable and not turned off (the one decision: llmlab.device)."""
    return use_onednn()


def dnn_linear(x2: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x2 (M, in) @ w.T (+ b) through oneDNN (no autograd); w may be a transposed view."""
    return torch.ops.mkldnn._linear_pointwise(x2.contiguous(), w, b, "none", [], "")


class _DnnLinear(torch.autograd.Function):
    """y = x W^T + b; dX = dY W (oneDNN, reading W^T as a strided view: no copy), dW = dY^T X
    (MKL), db = sum dY."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        ctx.save_for_backward(x2, weight)
        ctx.has_bias, ctx.x_shape = bias is not None, x.shape
        return dnn_linear(x2, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_y):
        x2, w = ctx.saved_tensors
        g2 = grad_y.reshape(-1, w.shape[0]).contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = dnn_linear(g2, w.t()).view(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            gw = g2.t().mm(x2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb


def linear(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """mod(x), through oneDNN when that applies (see the module docstring)."""
    if (type(mod) is nn.Linear and x.device.type == "cpu" and x.dtype == torch.float32
            and mod.weight.dtype == torch.float32 and torch.is_grad_enabled()
            and x.numel() >= MIN_ROWS * x.shape[-1] and not torch.is_autocast_enabled("cpu")
            and not (mod._forward_hooks or mod._forward_pre_hooks or nn.modules.module._global_forward_hooks
                     or nn.modules.module._global_forward_pre_hooks)
            and not torch.compiler.is_compiling() and use_dnn()):
        return _DnnLinear.apply(x, mod.weight, mod.bias)
    return mod(x)
