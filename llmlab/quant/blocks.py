"""Weight-only rows (RTN, GPTQ: int4 g128 zero-point, int8 per-channel) run by the block kernel.

`quantize_model` leaves each weight as its dequantized values s * (q - z) (fp32), so a row computes
what a kernel over the codes would, at the fp32 model's speed. The block kernel
(`llmlab.kernels.ggml`, the one GGUF Q4_1/Q8_0 run through) multiplies 32-weight blocks
w = d * u + m (fmt 4: 4-bit u, fp32 d and m per block) or w = d * q (fmt 8: int8 q). A group of
g = 32·n weights with one (scale s, zero z) is n such blocks with the same d = s and
m = s·(lo − z), u = q − lo (lo: the grid's lowest code, 0 for zero-point grids, −7 for symmetric
int4), so an int4 g128 zero-point row (SmolLM2's ragged 64-wide last group too) and an int8
symmetric per-channel row are exact block weights; only the fp32 rounding of d·u + m differs from
(q − z)·s, by ulps.

The codes and (scale, zero) come from the quantizer that made them (`ptq.GroupGrid`, from
`ptq.rtn_grid` and `gptq.gptq_grid`; `quantize_model(..., grids=...)` collects them by Linear
name): nothing is recovered from the dequantized weights. A row with no grid (AWQ stores
Q(W·s)/s: each column has its own 1/s; NF4; activation methods) stays an fp32 matmul.
`attach_blocks` sets each weight to its blocks' exact decode (so the model and the kernel compute
with the same values bit for bit, as `ggml.blocks_for` requires) and hands the blocks to the model.
"""
from __future__ import annotations

import torch

from llmlab.kernels import ggml
from llmlab.quant.ptq import GroupGrid, qrange

QK = ggml.QK


def _group_widths(k: int, group: int) -> list[int]:
    """Widths of a row's granules (group <= 0: the whole row; a ragged last group)."""
    if group <= 0:
        return [k]
    return [min(group, k - c) for c in range(0, k, group)]


def to_blocks(g: GroupGrid) -> ggml.QuantWeight | None:
    """A quantizer's grid -> kernel blocks: fmt 4 where the grid has at most 16 codes, fmt 8 for a
    symmetric int8 grid; None where a granule is not a whole number of 32-weight blocks or the grid
    fits neither (asymmetric int8)."""
    rows, k = g.codes.shape
    widths = _group_widths(k, g.group)
    if any(w % QK for w in widths):
        return None
    per_block = torch.tensor([w // QK for w in widths])
    scale, zero = g.scale.double(), g.zero.double()
    d = scale.repeat_interleave(per_block, dim=1)
    lo, hi = qrange(g.bits, g.sym)
    if hi - lo <= 15:  # fmt 4: (q - z) s = s (q - lo) + s (lo - z)
        u = (g.codes.to(torch.int16) - lo).to(torch.uint8).reshape(rows, -1, QK)
        qs = (u[..., :16] | (u[..., 16:] << 4)).reshape(rows, -1)
        m = (scale * (lo - zero)).repeat_interleave(per_block, dim=1)
        return ggml.QuantWeight(4, qs, d.float(), m.float())
    if g.sym and g.bits == 8:
        return ggml.QuantWeight(8, g.codes.to(torch.int8), d.float(), None)
    return None


@torch.no_grad()
def attach_blocks(model, grids: dict[str, GroupGrid]) -> dict:
    """Give every quantizable Linear with a grid in `grids` (by Linear name) kernel blocks (see the
    module docstring); each such weight is set to the blocks' exact decode. -> {'blocks', 'fp32',
    'formats', 'max_change_steps' (the largest change of a weight, in steps of its group)}."""
    from llmlab.quant.calibrate import quantizable_linears
    kept, plain, fmts, worst = {}, [], {}, 0.0
    for n, lin in quantizable_linears(model).items():
        q = to_blocks(grids[n]) if n in grids and ggml.available() else None
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
