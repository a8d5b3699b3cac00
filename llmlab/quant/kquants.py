"""K-quant encoder Q6_K (ggml's `quantize_row_q6_K_ref`, vectorized in torch).

A super-block of 256 weights is 16 sub-blocks of 16. Each sub-block gets a scale from
`make_qx_quants` (nmax = 32, weights x^2): start from scale = max/-32, try 18 nudged scales
-(32 + 0.1 i)/max, i = -9..9, and keep the one maximizing (sum w x l)^2 / (sum w l^2), i.e. the
least weighted squared error after the optimal rescale. The 16 sub-block scales are then
quantized to int8 against one fp16 super-scale d = max_scale / -128, and the weights re-rounded
to 6 bits with their int8-quantized scale:  w' = d * scale_j * (q - 32),  q in 0..63.
Layout (210 bytes): ql[128] low nibbles, qh[64] high 2 bits, scales[16] int8, d fp16.
Decoding is `gguf.quants.dequantize` (tested against it). llama.cpp computes the candidate sums in
sequential fp32 while torch sums pairwise, so a near-tie may choose another candidate than
llama.cpp: the file is valid Q6_K, but not guaranteed byte-identical to llama.cpp's `quantize`.
"""
from __future__ import annotations

import torch

QK_K = 256
_EPS = 1e-15  # ggml's GROUP_MAX_EPS


def _nearest(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x)  # nearest_int: round half to even via the 1.5*2^23 trick == torch.round


def _qx_scales(x: torch.Tensor, nmax: int = 32) -> torch.Tensor:
    """make_qx_quants(rmse_type=1) for every row of x (n, 16) -> the chosen scale (n,)."""
    amax_idx = x.abs().argmax(1, keepdim=True)
    mx = x.gather(1, amax_idx)  # the signed value of largest magnitude
    w = x * x
    best_scale = torch.zeros(x.shape[0])
    best = torch.full((x.shape[0],), -float("inf"))
    for i in [0] + [i for i in range(-9, 10) if i != 0]:
        iscale = -(nmax + 0.1 * i) / mx if i else -nmax / mx
        lv = _nearest(iscale * x).clamp(-nmax, nmax - 1)
        sumlx, suml2 = (w * x * lv).sum(1), (w * lv * lv).sum(1)
        ok = suml2 > 0
        scale = torch.where(ok, sumlx / torch.where(ok, suml2, torch.ones_like(suml2)), torch.zeros_like(sumlx))
        val = scale * sumlx
        better = (val > best) if i else torch.ones_like(ok)
        best_scale = torch.where(better, scale, best_scale)
        best = torch.where(better, val, best)
    return torch.where(mx.squeeze(1).abs() < _EPS, torch.zeros_like(best_scale), best_scale)


def encode_q6_k(w: torch.Tensor) -> torch.Tensor:
    """w (rows, k), k % 256 == 0 -> uint8 (rows, k / 256 * 210)."""
    rows, k = w.shape
    x = w.detach().float().reshape(-1, 16, 16)  # (blocks, sub-block, 16)
    nb = x.shape[0]
    scales = _qx_scales(x.reshape(-1, 16)).view(nb, 16)
    idx = scales.abs().argmax(1, keepdim=True)
    max_scale = scales.gather(1, idx).squeeze(1)
    zero = max_scale.abs() < _EPS
    iscale = torch.where(zero, torch.zeros_like(max_scale), -128.0 / torch.where(zero, torch.ones_like(max_scale),
                                                                                  max_scale))
    d16 = torch.where(zero, torch.zeros_like(iscale), 1 / torch.where(zero, torch.ones_like(iscale), iscale)).half()
    sc = torch.clamp(_nearest(iscale[:, None] * scales), max=127).to(torch.int8)
    sc = torch.where(zero[:, None], torch.zeros_like(sc), sc)
    dj = d16.float()[:, None] * sc.float()  # (nb, 16)
    safe = torch.where(dj == 0, torch.ones_like(dj), dj)
    L = (_nearest(x / safe[..., None]).clamp(-32, 31) + 32)
    L = torch.where((dj == 0)[..., None], torch.zeros_like(L), L).to(torch.uint8).reshape(nb, 2, 4, 32)
    lo = L & 0x0F
    ql = torch.cat([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], dim=2).reshape(nb, 128)
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4) | ((L[:, :, 3] >> 4) << 6))
    out = torch.cat([ql, qh.reshape(nb, 64), sc.view(torch.uint8), d16.view(torch.uint8).reshape(nb, 2)], dim=1)
    return out.reshape(rows, -1)
