"""Weight-only rows (RTN, GPTQ: int4 g128 zero-point, int8 per-channel) run by the block kernel.

`quantize_model` leaves each weight as its dequantized values s * (q - z) (fp32), so a row computes
what a kernel over the codes would, at the fp32 model's speed. The block kernel
(`llmlab.kernels.ggml`, the one GGUF Q4_1/Q8_0 run through) multiplies 32-weight blocks
w = d * q + m (fmt 4: 4-bit q, fp32 d and m per block) or w = d * q (fmt 8: int8 q). A group of
g = 32·n weights with one (scale, zero) is n such blocks with the same d = s and m = -s·z, so an int4
g128 zero-point row (SmolLM2's ragged 64-wide last group too) and an int8 per-channel row are
exact block weights; only the fp32 rounding of d·q + m differs from (q − z)·s, by ulps.

`to_blocks` recovers each group's step s and integer codes from the dequantized values (the
smallest gap between distinct values, refined by least squares) and checks that every weight is
within 1/1000 of a step of d·q + m; a weight that is not on such a grid (an AWQ row stores
Q(W·s)/s: each column has its own 1/s) gets None and stays an fp32 matmul. `attach_blocks` then
sets each weight to the blocks' exact decode (so the model and the kernel compute with the same
values bit for bit, as `ggml.blocks_for` requires) and hands the blocks to the model.
"""
from __future__ import annotations

import torch

from llmlab.kernels import ggml

QK = ggml.QK
TOL = 1e-3  # of a step


def _groups(k: int, group: int) -> list[tuple[int, int]]:
    """Column ranges of a row's granules (group <= 0: the whole row; a ragged last group)."""
    if group <= 0:
        return [(0, k)]
    return [(c, min(c + group, k)) for c in range(0, k, group)]


def _grid(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """v (G, n) -> per-row step s (G, 1) and integer codes t (G, n) with v ~ s * t; s = 0 where a row is 0."""
    vs = v.sort(dim=1).values
    scale = v.abs().amax(dim=1, keepdim=True)
    gap = vs.diff(dim=1)
    gap = torch.where(gap > 1e-4 * scale, gap, torch.full_like(gap, float("inf"))).amin(dim=1, keepdim=True)
    gap = torch.where(torch.isfinite(gap), gap, scale)  # one distinct nonzero value: it is the step
    s0 = torch.where(scale > 0, gap, torch.ones_like(gap))
    t = torch.round(v / s0)
    s = (v * t).sum(1, keepdim=True) / (t * t).sum(1, keepdim=True).clamp_min(1)  # least squares
    return torch.where(scale > 0, s, torch.zeros_like(s)), t


def to_blocks(w: torch.Tensor, group: int) -> ggml.QuantWeight | None:
    """A dequantized weight (rows, k) whose granules (`group` consecutive weights of a row, group
    <= 0: a row) are each s·(q − z) on one 4-bit grid (fmt 4) or s·q on an int8 grid (fmt 8) ->
    kernel blocks; None if some granule is on no such grid or a granule is not a whole number of
    32-weight blocks."""
    w = w.detach().float()
    rows, k = w.shape
    spans = _groups(k, group)
    if any((b - a) % QK for a, b in spans):
        return None
    d, lo, q = [], [], []
    for a, b in spans:
        s, t = _grid(w[:, a:b])
        if bool(((w[:, a:b] - s * t).abs() > TOL * s).any()):
            return None
        n = (b - a) // QK
        d.append(s.expand(rows, n))
        lo.append(t.amin(dim=1, keepdim=True).expand(rows, n))  # the granule's lowest code, per block
        q.append(t)
    t, lo, d = torch.cat(q, dim=1), torch.cat(lo, dim=1), torch.cat(d, dim=1).contiguous()
    u = t.reshape(rows, -1, QK) - lo[..., None]
    if int(u.max()) <= 15:  # fmt 4: w = d * (t - lo) + d * lo, codes 0..15
        u = u.to(torch.uint8)
        qs = (u[..., :16] | (u[..., 16:] << 4)).reshape(rows, -1)
        return ggml.QuantWeight(4, qs, d, (d * lo).contiguous())
    if int(t.abs().max()) <= 127:
        return ggml.QuantWeight(8, t.to(torch.int8).reshape(rows, -1), d, None)
    return None


@torch.no_grad()
def attach_blocks(model, group: int) -> dict:
    """Give every quantizable Linear whose weight is on a group grid kernel blocks (see the module
    docstring); each such weight is set to the blocks' exact decode. -> {'blocks', 'fp32', 'formats',
    'max_change_steps' (the largest change of a weight, in steps of its group)}."""
    from llmlab.quant.calibrate import quantizable_linears
    kept, plain, fmts, worst = {}, [], {}, 0.0
    for n, lin in quantizable_linears(model).items():
        q = to_blocks(lin.weight, group) if ggml.available() else None
        if q is None:
            plain.append(n)
            continue
        new = q.dequantize()
        step = q.d.repeat_interleave(QK, dim=1).clamp_min(1e-30)
        worst = max(worst, float(((new - lin.weight.float()).abs() / step).max()))
        lin.weight.copy_(new.to(lin.weight.dtype))
        kept[f"{n}.weight"] = q
        fmts[q.fmt] = fmts.get(q.fmt, 0) + 1
    if kept:
        ggml.attach(model, kept)
    return {"blocks": len(kept), "fp32": len(plain), "formats": {f"fmt{f}": c for f, c in fmts.items()},
            "max_change_steps": worst}
