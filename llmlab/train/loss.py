"""Fused LM-head + cross-entropy, computed in row chunks (the idea of Liger Kernel's
FusedLinearCrossEntropy, Hsu et al. 2024), in plain PyTorch.

The usual path materialises logits (N, V), their log-softmax (N, V) for backward, and then the
gradient (N, V): three N x V buffers, which for a 32k vocabulary dwarf the rest of a small model's
activations. Here each chunk of rows computes its logits, its loss and, in the same pass, the
gradients of the loss w.r.t. the hidden states and the LM-head weight:

    p = softmax(h W^T),  dL/dlogits = (p - onehot(y)) / n,  dL/dh = (dL/dlogits) W,
    dL/dW = (dL/dlogits)^T h

so only one chunk of logits exists at a time and backward is a multiply by the incoming scalar.
Same 3 matmuls as unfused; labels equal to `ignore_index` contribute nothing (n counts the rest).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from llmlab.model.linear import dnn_linear, use_dnn


def _chunk_rows(n_rows: int, vocab: int, chunk_elems: int) -> int:
    return max(1, min(n_rows, chunk_elems // max(1, vocab)))


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, labels, ignore_index, chunk_elems, compute_dtype):
        n_valid = (labels != ignore_index).sum().clamp(min=1)
        inv_n = 1.0 / n_valid.to(torch.float32)
        w = weight.to(compute_dtype)
        # fp32 on CPU: logits and dL/dh through oneDNN (faster than MKL here, llmlab.model.linear)
        dnn = compute_dtype == torch.float32 and h.device.type == "cpu" and use_dnn()
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        step = _chunk_rows(h.shape[0], weight.shape[0], chunk_elems)
        for s in range(0, h.shape[0], step):
            hc = h[s:s + step].to(compute_dtype)
            yc = labels[s:s + step]
            logits = (dnn_linear(hc, w) if dnn else hc @ w.t()).float()
            valid = yc != ignore_index
            safe = torch.where(valid, yc, 0)
            # p = softmax(logits) (one pass; log_softmax + exp took 2.6x as long here), and
            # -log p[y] from it; rows where p[y] underflows (loss > ~69 nats) get log_softmax
            g = torch.softmax(logits, dim=-1)
            py = g.gather(1, safe.unsqueeze(1)).squeeze(1)
            nll = -torch.log(py)
            tiny = py < 1e-30
            if tiny.any():
                rows = tiny.nonzero().squeeze(1)
                nll[rows] = -torch.log_softmax(logits[rows], dim=-1).gather(1, safe[rows].unsqueeze(1)).squeeze(1)
            total += (nll * valid).sum()
            del logits
            # the gradient in the same buffer: softmax - onehot, scaled, ignored rows zeroed
            g.scatter_add_(1, safe.unsqueeze(1), torch.full_like(g[:, :1], -1.0))
            g.mul_((valid.to(g.dtype) * inv_n).unsqueeze(1))
            gc = g.to(compute_dtype)
            if dnn:
                grad_h[s:s + step] = dnn_linear(gc, w.t())
                grad_w.addmm_(gc.t(), hc)
            elif gc.dtype == grad_h.dtype == torch.float32:  # write in place: no temporaries
                torch.mm(gc, w, out=grad_h[s:s + step])
                grad_w.addmm_(gc.t(), hc)
            else:
                grad_h[s:s + step] = (gc @ w).to(h.dtype)
                grad_w.add_((gc.t() @ hc).float())
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return total * inv_n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         ignore_index: int = -100, chunk_elems: int = 1 << 22) -> torch.Tensor:
    """Mean CE of logits = hidden @ weight.T against labels; hidden (..., d), labels (...).

    Under autocast the matmuls run in the autocast dtype and the softmax in fp32.
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    y = labels.reshape(-1)
    dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
    if not (torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)):
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        step = _chunk_rows(h.shape[0], weight.shape[0], chunk_elems)
        w = weight.to(dtype)
        for s in range(0, h.shape[0], step):
            logits = (h[s:s + step].to(dtype) @ w.t()).float()
            total += F.cross_entropy(logits, y[s:s + step], ignore_index=ignore_index, reduction="sum")
        return total / (y != ignore_index).sum().clamp(min=1)
    with torch.autocast(h.device.type, enabled=False):
        return _FusedLinearCE.apply(h, weight, y, ignore_index, chunk_elems, dtype)
