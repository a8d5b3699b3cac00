"""4-bit NormalFloat (NF4) with double quantization (Dettmers et al. 2023, QLoRA, arXiv:2305.14314).

NF4 is quantile quantization for N(0, 1) weights: 16 levels that split the standard normal into
(nearly) equal-probability bins, rescaled to [-1, 1], with an exact 0 (asymmetric: 8 positive,
7 negative levels; the paper's Appendix E / bitsandbytes table below, rebuilt from the normal
quantile function in the tests). A tensor is cut into blocks of 64 values; each block is divided
by its absmax c1 and every value is stored as the 4-bit index of its nearest level, two indices
per uint8 byte (even element in the high nibble).

Double quantization: the fp32 absmax constants (32 bits / 64 values = 0.5 bit per weight) are
themselves quantized: their mean is subtracted, then blocks of 256 constants are stored as int8
with one fp32 absmax c2 per block, so a constant costs 8 + 32/256 bits (0.127 bit per weight).
The paper stores c1 as 8-bit floats; we use symmetric int8 codes (same size, simpler, and the
error is bounded by c2/254 per constant, checked in the tests).

    stored bits per weight = 4 + 8/64 + 32/(64*256) = 4.127   (fp32: 32)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0])
# decision boundaries halfway between neighbouring levels: bucketize == nearest level
_MIDPOINTS = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2


def nf4_levels_from_normal(offset: float = 0.9677083) -> torch.Tensor:
    """Rebuild the table from N(0,1) quantiles as in the paper's construction (bitsandbytes
    `create_normal_map`): 8 positive quantiles of linspace(offset, 0.5, 9), 7 negative of
    linspace(offset, 0.5, 8), plus 0, normalised by the largest."""
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    v = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return (v / v.abs().max()).float()


@dataclass
class NF4Tensor:
    packed: torch.Tensor        # uint8 (ceil(n/2),): two 4-bit level indices per byte
    absmax_q: torch.Tensor      # int8 (n_blocks,) or fp32 when double_quant is off
    absmax_scale: torch.Tensor  # fp32 (ceil(n_blocks/dq_block),): c2 per block of constants
    absmax_mean: torch.Tensor   # fp32 scalar subtracted before the second quantization
    shape: tuple
    block: int = 64
    dq_block: int = 256

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    def nbytes(self) -> int:
        """Bytes actually stored for the weight (codes + quantized scales + second-level scales)."""
        return sum(t.numel() * t.element_size() for t in (self.packed, self.absmax_q, self.absmax_scale,
                                                          self.absmax_mean))

    def absmax(self) -> torch.Tensor:
        if self.absmax_q.dtype == torch.float32:
            return self.absmax_q
        n = self.absmax_q.numel()
        scale = self.absmax_scale.repeat_interleave(self.dq_block)[:n]
        return self.absmax_q.float() / 127.0 * scale + self.absmax_mean

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        codes = torch.stack([self.packed >> 4, self.packed & 0x0F], dim=1).reshape(-1)
        values = NF4_LEVELS.to(self.packed.device)[codes.long()].view(-1, self.block)
        w = (values * self.absmax().unsqueeze(1)).reshape(-1)[: self.numel]
        return w.view(self.shape).to(dtype)


def quantize_nf4(w: torch.Tensor, block: int = 64, double_quant: bool = True, dq_block: int = 256) -> NF4Tensor:
    flat = w.detach().reshape(-1).float()
    n = flat.numel()
    pad = (-n) % block
    if pad % 2:  # keep the code count even for the 2-per-byte packing (block is even anyway)
        pad += block
    blocks = torch.nn.functional.pad(flat, (0, pad)).view(-1, block)
    absmax = blocks.abs().amax(dim=1)
    normed = blocks / absmax.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(1)
    codes = torch.bucketize(normed, _MIDPOINTS.to(w.device)).to(torch.uint8).reshape(-1)
    packed = (codes[0::2] << 4) | codes[1::2]
    if not double_quant:
        return NF4Tensor(packed, absmax, torch.zeros(0), torch.zeros(()), tuple(w.shape), block, dq_block)
    mean = absmax.mean()
    centered = absmax - mean
    cpad = torch.nn.functional.pad(centered, (0, (-centered.numel()) % dq_block)).view(-1, dq_block)
    scale = cpad.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round(cpad / scale.unsqueeze(1) * 127.0).clamp(-127, 127).to(torch.int8).reshape(-1)[: absmax.numel()]
    return NF4Tensor(packed, q, scale, mean, tuple(w.shape), block, dq_block)


def quantize_int4_absmax(w: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Uniform symmetric int4 (levels -7..7 times absmax/7) round trip, the baseline NF4 beats."""
    flat = w.detach().reshape(-1).float()
    pad = (-flat.numel()) % block
    blocks = torch.nn.functional.pad(flat, (0, pad)).view(-1, block)
    scale = blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-30) / 7.0
    return (torch.round(blocks / scale).clamp(-7, 7) * scale).reshape(-1)[: flat.numel()].view(w.shape)
