"""K-quant encoders Q6_K, Q4_K and Q5_K (ggml's `quantize_row_q6_K_ref`, `_q4_K_ref`, `_q5_K_ref`,
vectorized in torch). Q4_K/Q5_K: see `_encode_k` and `_qkx2` at the end; Q6_K below.

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


def _qkx2(x: torch.Tensor, w: torch.Tensor, nmax: int, rmin: float, rdelta: float, nstep: int):
    """ggml's make_qkx2_quants (use_mad = false) for every row of x (n, 32), weights w:
    an asymmetric grid  x ~ scale * l - mn,  l in 0..nmax,  chosen among nstep + 1 nudged
    scales by the weighted squared error, each refit by weighted least squares
    -> (scale (n,), mn (n,) >= 0, l (n, 32))."""
    lo = x.amin(1).clamp(max=0)
    hi = x.amax(1)
    span = hi - lo
    flat = span == 0
    span = torch.where(flat, torch.ones_like(span), span)
    sum_w, sum_x = w.sum(1), (w * x).sum(1)

    def levels(iscale):
        return _nearest(iscale[:, None] * (x - lo[:, None])).clamp(0, nmax)

    def error(scale, mn, lv):
        return (w * (scale[:, None] * lv + mn[:, None] - x) ** 2).sum(1)

    iscale = nmax / span
    scale, mn = 1 / iscale, lo.clone()
    best_l = levels(iscale)
    best = error(scale, mn, best_l)
    for step in range(nstep + 1):
        lv = levels((rmin + rdelta * step + nmax) / span)
        sl, sl2, sxl = (w * lv).sum(1), (w * lv * lv).sum(1), (w * lv * x).sum(1)
        D = sum_w * sl2 - sl * sl
        ok = D > 0
        Ds = torch.where(ok, D, torch.ones_like(D))
        this_scale, this_min = (sum_w * sxl - sum_x * sl) / Ds, (sl2 * sum_x - sl * sxl) / Ds
        pos = this_min > 0  # the grid must reach 0 from above: refit the scale alone
        this_scale = torch.where(pos, sxl / torch.where(sl2 > 0, sl2, torch.ones_like(sl2)), this_scale)
        this_min = torch.where(pos, torch.zeros_like(this_min), this_min)
        cur = error(this_scale, this_min, lv)
        better = ok & (cur < best)
        best_l = torch.where(better[:, None], lv, best_l)
        best, scale, mn = torch.where(better, cur, best), torch.where(better, this_scale, scale), torch.where(better, this_min, mn)
    scale = torch.where(flat, torch.zeros_like(scale), scale)
    mn = torch.where(flat, lo, mn)
    return scale, -mn, torch.where(flat[:, None], torch.zeros_like(best_l), best_l)


def _encode_k(w: torch.Tensor, nmax: int, rmin: float, nstep: int):
    """Shared part of Q4_K and Q5_K (ggml's quantize_row_q4_K_ref / q5_K_ref): per super-block of
    256, 8 sub-blocks of 32 with a 6-bit scale and a 6-bit min against fp16 d and dmin:
    w' = d * sc_j * q - dmin * m_j,  q in 0..nmax. -> (head: d, dmin, 12 scale bytes (nb, 16),
    q (nb, 8, 32) uint8)."""
    x = w.detach().float().reshape(-1, 32)
    nb = x.shape[0] // 8
    av = (x * x).mean(1, keepdim=True).sqrt()
    scales, mins, _ = _qkx2(x, av + x.abs(), nmax, rmin, 0.1, nstep)
    scales, mins = scales.view(nb, 8), mins.view(nb, 8)
    ms, mm = scales.amax(1), mins.amax(1)
    inv_s = torch.where(ms > 0, 63 / torch.where(ms > 0, ms, torch.ones_like(ms)), torch.zeros_like(ms))
    inv_m = torch.where(mm > 0, 63 / torch.where(mm > 0, mm, torch.ones_like(mm)), torch.zeros_like(mm))
    ls = _nearest(inv_s[:, None] * scales).clamp(max=63).to(torch.uint8)
    lm = _nearest(inv_m[:, None] * mins).clamp(max=63).to(torch.uint8)
    packed = torch.cat([ls[:, :4] | ((ls[:, 4:] >> 4) << 6), lm[:, :4] | ((lm[:, 4:] >> 4) << 6),
                        (ls[:, 4:] & 0x0F) | ((lm[:, 4:] & 0x0F) << 4)], dim=1)
    d16, dmin16 = (ms / 63).half(), (mm / 63).half()
    dj = d16.float()[:, None] * ls.float()  # (nb, 8): the scales the decoder will use
    dm = dmin16.float()[:, None] * lm.float()
    safe = torch.where(dj == 0, torch.ones_like(dj), dj)
    q = _nearest((x.view(nb, 8, 32) + dm[..., None]) / safe[..., None]).clamp(0, nmax)
    q = torch.where((dj == 0)[..., None], torch.zeros_like(q), q).to(torch.uint8)
    head = torch.cat([d16.view(torch.uint8).reshape(nb, 2), dmin16.view(torch.uint8).reshape(nb, 2), packed], 1)
    return head, q


def _nibbles(q: torch.Tensor) -> torch.Tensor:
    """(nb, 8, 32) levels 0..15 -> 128 bytes: per 64 weights, byte j = weight j | weight j+32 << 4."""
    q = q.reshape(-1, 4, 2, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def encode_q4_k(w: torch.Tensor) -> torch.Tensor:
    """w (rows, k), k % 256 == 0 -> uint8 (rows, k / 256 * 144): Q4_K (make_qkx2_quants with
    nmax 15, rmin -1, 20 steps, as llama.cpp's reference quantizer)."""
    rows, k = w.shape
    head, q = _encode_k(w, 15, -1.0, 20)
    return torch.cat([head, _nibbles(q)], 1).reshape(rows, -1)


def encode_q5_k(w: torch.Tensor) -> torch.Tensor:
    """w (rows, k), k % 256 == 0 -> uint8 (rows, k / 256 * 176): Q5_K (nmax 31, rmin -0.5,
    15 steps); the 5th bit of sub-block j's weight i is bit j of qh[i]."""
    rows, k = w.shape
    head, q = _encode_k(w, 31, -0.5, 15)
    bits = (q >> 4) << torch.arange(8, dtype=torch.uint8).view(1, 8, 1)  # (nb, 8, 32)
    qh = bits[:, 0]
    for j in range(1, 8):
        qh = qh | bits[:, j]
    return torch.cat([head, qh, _nibbles(q & 0x0F)], 1).reshape(rows, -1)
