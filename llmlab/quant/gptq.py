"""GPTQ (Frantar et al. 2022, arXiv:2210.17323): quantize a Linear's weight column by column,
spreading each column's rounding error onto the columns not yet quantized.

For one layer with calibration inputs X (n, k), the objective is the output error
||W X^T - Q X^T||^2 = tr((W - Q) H (W - Q)^T) with H = 2 X^T X (the Hessian of that loss).
Optimal Brain Quantization: after rounding column i to q_i, the remaining columns move by
    W[:, i+1:] -= (w_i - q_i) / [H^-1]_ii * [H^-1]_{i, i+1:}
GPTQ's three changes make that fast and stable:
  1. a fixed column order for every row (so H^-1 is shared by all rows);
  2. lazy batch updates: inside a block of B columns only the block is updated, the rest of the
     matrix gets one rank-B update per block (memory-bound -> compute-bound);
  3. the rows of H^-1 needed are those of its upper Cholesky factor: U with H^-1 = U^T U, taken
     once (with dampening lambda = percdamp * mean(diag H) added to H).
Act-order ("desc_act"): columns are processed in decreasing diag(H) (largest activations first).
With groups, each group of `group` columns gets its own (scale, zero). Without act-order they are
taken when the group's first column is reached (from the already-updated weights, as the paper's
code does); with act-order they are fixed beforehand on the original column groups ("static
groups"), so the stored layout is the ordinary one (no g_idx indirection).
"""
from __future__ import annotations

import torch

from llmlab.quant.ptq import GroupGrid, check_bits, fake_quant, pad_to_group, qparams, quantize_codes


def hessian(x: torch.Tensor) -> torch.Tensor:
    """H = 2/n X^T X for inputs x (..., k) (float64 for the accumulation)."""
    x = x.reshape(-1, x.shape[-1]).double()
    return 2.0 / x.shape[0] * x.t() @ x


def scaled_hessian(h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The Hessian of inputs x / s given H of x: H_ij / (s_i s_j) (AWQ's scaling before GPTQ)."""
    sd = s.double()
    return h.double() / (sd[:, None] * sd[None, :])


def layer_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    """tr((W - Q) H (W - Q)^T): the summed squared output error over the calibration inputs
    (up to the constant 2/n of H)."""
    d = (w - q).double()
    return float(torch.einsum("ij,jk,ik->", d, h.double(), d))


def clip_qparams(w: torch.Tensor, h: torch.Tensor, bits: int, sym: bool, steps: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """w (rows, g), h (g, g) -> per-row (scale, zero) of the range [r*min, r*max] (r = 1 - i/(2 steps),
    i < steps) minimizing d h d^T, d = Q(w) - w: the clip ratio with the least output error."""
    lo0 = w.amin(dim=1, keepdim=True).clamp_max(0)
    hi0 = w.amax(dim=1, keepdim=True).clamp_min(0)
    best_err = torch.full_like(lo0, float("inf"))
    best_s, best_z = torch.empty_like(lo0), torch.empty_like(lo0)
    tiny = torch.finfo(torch.float32).tiny
    for i in range(steps):
        r = 1 - i / (2 * steps)
        if sym:
            s = (torch.maximum(-lo0, hi0) * r).clamp_min(tiny) / (2 ** (bits - 1) - 1)
            z = torch.zeros_like(s)
        else:
            s = ((hi0 - lo0) * r / (2 ** bits - 1)).clamp_min(tiny)
            z = torch.round(-lo0 * r / s)
        d = fake_quant(w, s, z, bits, sym) - w
        err = ((d @ h) * d).sum(1, keepdim=True)
        better = err < best_err
        best_err[better], best_s[better], best_z[better] = err[better], s[better], z[better]
    return best_s, best_z


def gptq(w: torch.Tensor, h: torch.Tensor, bits: int = 4, group: int = 128, sym: bool = False,
         act_order: bool = True, blocksize: int = 128, percdamp: float = 0.01,
         ragged: bool = False, clip: bool = False) -> torch.Tensor:
    """w (rows, k), h (k, k) -> the dequantized GPTQ weight (w's dtype, rows x k); see `gptq_grid`."""
    return gptq_grid(w, h, bits, group, sym, act_order, blocksize, percdamp, ragged, clip).dequantize().to(w.dtype)


def gptq_grid(w: torch.Tensor, h: torch.Tensor, bits: int = 4, group: int = 128, sym: bool = False,
              act_order: bool = True, blocksize: int = 128, percdamp: float = 0.01,
              ragged: bool = False, clip: bool = False) -> GroupGrid:
    """w (rows, k), h (k, k) -> GPTQ's codes and per-group (scale, zero) (float64), in the original
    column order. group <= 0: one (scale, zero) per row. ragged: a group that does not divide k
    leaves a shorter last group (otherwise that is an error). clip: the group ranges by
    output-error search (see above)."""
    check_bits(bits)
    W = w.detach().double().clone()
    H = h.detach().double().clone()
    rows, k = W.shape
    if group > 0 and k % group and not ragged:
        from llmlab.errors import UserError
        raise UserError(f"group size {group} does not divide the row length {k}")
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    if clip and group > 0 and not act_order:
        from llmlab.errors import UserError
        raise UserError("GPTQ's clip search needs act_order (static groups) or per-row parameters")
    static = None
    if group > 0 and act_order and clip:  # static groups, each range chosen on its block of H
        parts = [clip_qparams(W[:, c:c + group], H[c:c + group, c:c + group], bits, sym) for c in range(0, k, group)]
        static = (torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1))
    elif group > 0 and act_order:  # static groups on the original columns
        s, z = qparams(pad_to_group(W, group).reshape(-1, group), bits, sym)
        static = (s.view(rows, -1), z.view(rows, -1))
    elif group <= 0:
        s, z = clip_qparams(W, H, bits, sym) if clip else qparams(W, bits, sym)
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(k)
    W, H = W[:, perm], H[perm][:, perm]
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(k, dtype=H.dtype)
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    if group > 0:
        blocksize = group * max(1, blocksize // group)  # groups never straddle two blocks
    codes = torch.zeros_like(W)
    n_groups = -(-k // group) if group > 0 else 1
    if static is not None:
        S, Z = static
    else:  # filled as each group is reached (group <= 0: the per-row s, z at the end)
        S = torch.zeros(rows, n_groups, dtype=W.dtype)
        Z = torch.zeros_like(S)
    for i1 in range(0, k, blocksize):
        i2 = min(i1 + blocksize, k)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if static is not None:
                gi = int(perm[col]) // group
                s, z = static[0][:, gi:gi + 1], static[1][:, gi:gi + 1]
            elif group > 0 and col % group == 0:  # no act-order: perm is the identity
                s, z = qparams(W1[:, i:i + group], bits, sym)
                S[:, col // group:col // group + 1], Z[:, col // group:col // group + 1] = s, z
            wc = W1[:, i:i + 1]
            code = quantize_codes(wc, s, z, bits, sym)
            qc = (code - z) * s  # = fake_quant(wc, s, z, bits, sym)
            codes[:, col:col + 1] = code
            err = (wc - qc) / Hinv1[i, i]
            W1[:, i:] -= err @ Hinv1[i:i + 1, i:]
            Err1[:, i:i + 1] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if group <= 0:
        S, Z = s, z
    codes = codes[:, torch.argsort(perm)].to(torch.int8 if sym else torch.uint8)
    return GroupGrid(codes, S, Z, group, bits, sym)
