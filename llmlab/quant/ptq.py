"""Post-training quantization building blocks: uniform integer grids, their granularity, packing.

A b-bit uniform quantizer maps a real weight w to an integer code q and back (Jacob et al. 2018,
arXiv:1712.05877; Nagel et al. 2021, "A White Paper on Neural Network Quantization"):

  symmetric (absmax):      scale = max|w| / qmax,         q = clamp(round(w / scale), -qmax, qmax),
                           w' = scale * q,  qmax = 2^(b-1) - 1   (int8: -127..127, int4: -7..7)
  asymmetric (zero-point): scale = (max - min) / (2^b - 1),  z = round(-min / scale),
                           q = clamp(round(w / scale) + z, 0, 2^b - 1),  w' = scale * (q - z)
                           (min <= 0 <= max is enforced so that 0 is exact: zero padding stays 0)

Rounding to nearest bounds the error by scale / 2 per element (tested). One (scale, zero) pair
covers a *granule*: the whole tensor, one output channel (row), or a group of `group` consecutive
weights of a row (32/64/128: the GPTQ/AWQ default 128, GGUF's 32). Smaller granules follow the
local range better and cost more scale bytes.

Int4 codes are stored two per byte (`pack_int4`: element 2i in the low nibble). Activations for
W8A8 are quantized on the fly, one symmetric int8 scale per token (`quantize_per_token`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from llmlab.errors import UserError

BITS = (2, 3, 4, 8)


def check_granularity(w: torch.Tensor, group: int | str) -> None:
    """Refuse what no quantizer here takes: a weight that is not 2-D, a granularity other than
    'tensor', 'channel' (or -1) or a positive integer, a group that does not divide the row."""
    if w.dim() != 2:
        raise UserError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    if group in ("tensor", "channel", -1):
        return
    if not isinstance(group, int) or group <= 0:
        raise UserError(f"group must be 'tensor', 'channel' or a positive integer, got {group!r}")
    if w.shape[1] % group:
        raise UserError(f"group size {group} does not divide the row length {w.shape[1]}")


def pad_to_group(w: torch.Tensor, group: int) -> torch.Tensor:
    """w (rows, k) with zero columns appended up to a multiple of `group`: a ragged last group
    (e.g. 576 = 4 x 128 + 64). The zeros change neither the absmax nor the zero-point range
    (qparams keeps 0 inside [min, max]), so the real weights get exactly their group's grid."""
    pad = (-w.shape[1]) % group
    return torch.nn.functional.pad(w, (0, pad)) if pad else w


@dataclass
class GroupGrid:
    """A 2-D weight as integer codes on per-group grids: w' = (codes - zero) * scale, one (scale,
    zero) per `group` consecutive weights of a row (a ragged last group where `group` does not
    divide the row; group <= 0: one per row). What RTN and GPTQ make, handed as is to the block
    kernel (`llmlab.quant.blocks`) instead of being recovered from the dequantized weight."""
    codes: torch.Tensor  # (rows, k) integers: uint8 for zero-point grids, int8 for symmetric ones
    scale: torch.Tensor  # (rows, n_groups); (1, 1) for one scale over the tensor
    zero: torch.Tensor   # like scale, integer-valued (0 for symmetric grids)
    group: int
    bits: int
    sym: bool

    def per_column(self, t: torch.Tensor) -> torch.Tensor:
        """A (rows, n_groups) parameter -> (rows, k) (or (1, k) for a (1, 1) one): each group's
        value on each of its columns."""
        k = self.codes.shape[1]
        return t.expand(-1, k) if self.group <= 0 else t.repeat_interleave(self.group, dim=1)[:, :k]

    def dequantize(self) -> torch.Tensor:
        """(codes - zero) * scale in the scale's dtype (the same operations as `fake_quant`)."""
        return (self.codes.to(self.scale.dtype) - self.per_column(self.zero)) * self.per_column(self.scale)

    def nbytes(self, scale_bytes: int = 2) -> int:
        """Stored size: codes at `bits` each, fp16 scales, zero-points at `bits` each."""
        n_codes = self.codes.numel() * self.bits
        n_params = self.scale.numel() * (8 * scale_bytes + (0 if self.sym else self.bits))
        return (n_codes + n_params + 7) // 8


def rtn_grid(w: torch.Tensor, bits: int, group: int, sym: bool) -> GroupGrid:
    """Round-to-nearest of a 2-D weight onto per-group grids (group <= 0: per row; a group that
    does not divide the row leaves a shorter last group: callers that must refuse that check first)."""
    rows, k = w.shape
    g = w if group <= 0 else pad_to_group(w, group).reshape(-1, group)
    s, z = qparams(g, bits, sym)
    codes = quantize_codes(g, s, z, bits, sym).reshape(rows, -1)[:, :k]
    return GroupGrid(codes.to(torch.int8 if sym else torch.uint8), s.view(rows, -1), z.view(rows, -1),
                     group, bits, sym)


def rtn_fake(w: torch.Tensor, bits: int, group: int, sym: bool) -> torch.Tensor:
    """The round-to-nearest fake-quantized 2-D weight (`rtn_grid` dequantized)."""
    return rtn_grid(w, bits, group, sym).dequantize()


def check_bits(bits: int) -> None:
    if bits not in BITS:
        raise UserError(f"unsupported bit width {bits} (supported: {', '.join(map(str, BITS))})")


def qparams(g: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, zero) of g (n, size); zero is 0 for symmetric grids."""
    tiny = torch.finfo(torch.float32).tiny
    if sym:
        scale = g.abs().amax(dim=1, keepdim=True).clamp_min(tiny) / (2 ** (bits - 1) - 1)
        return scale, torch.zeros_like(scale)
    lo = g.amin(dim=1, keepdim=True).clamp_max(0)
    hi = g.amax(dim=1, keepdim=True).clamp_min(0)
    scale = ((hi - lo) / (2 ** bits - 1)).clamp_min(tiny)
    return scale, torch.round(-lo / scale)


def qrange(bits: int, sym: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if sym else (0, 2 ** bits - 1)


def quantize_codes(g: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, sym: bool) -> torch.Tensor:
    lo, hi = qrange(bits, sym)
    return torch.clamp(torch.round(g / scale) + zero, lo, hi)


def fake_quant(g: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, sym: bool) -> torch.Tensor:
    """Quantize then dequantize with given parameters (what the model computes with)."""
    return (quantize_codes(g, scale, zero, bits, sym) - zero) * scale


def quantize(w: torch.Tensor, bits: int = 8, group: int | str = "channel", sym: bool = True) -> GroupGrid:
    """Round-to-nearest (RTN) quantization of a 2-D weight: group 'tensor' (one scale, held as
    (1, 1)), 'channel' (per row) or an int that divides the row."""
    check_bits(bits)
    w = w.detach().float()
    check_granularity(w, group)
    if group == "tensor":
        s, z = qparams(w.reshape(1, -1), bits, sym)
        codes = quantize_codes(w, s, z, bits, sym)
        return GroupGrid(codes.to(torch.int8 if sym else torch.uint8), s, z, -1, bits, sym)
    return rtn_grid(w, bits, -1 if group == "channel" else group, sym)


def rtn(w: torch.Tensor, bits: int = 4, group: int | str = 128, sym: bool = False) -> torch.Tensor:
    """The dequantized RTN weight (fp32, same shape)."""
    return quantize(w, bits, group, sym).dequantize().to(w.dtype)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Unsigned 4-bit codes (0..15, any shape with an even element count) -> uint8, two per byte."""
    c = codes.reshape(-1).to(torch.uint8)
    if c.numel() % 2:
        raise UserError("pack_int4 needs an even number of codes")
    if int(c.max()) > 15:
        raise UserError("pack_int4: codes must be in 0..15")
    return c[0::2] | (c[1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1)


def quantize_per_token(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric activation quantization, one scale per token (last dim = features):
    -> (int8 codes, fp32 scale with a trailing dim of 1)."""
    qmax = 2 ** (bits - 1) - 1
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / qmax
    return torch.clamp(torch.round(x / scale), -qmax, qmax).to(torch.int8), scale


def fake_quant_per_token(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    q, scale = quantize_per_token(x, bits)
    return q.to(x.dtype) * scale
