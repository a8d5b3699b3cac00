"""Rotary position embedding (Su et al. 2021, RoFormer), in the "rotate half" layout HF LLaMA uses,
with partial rotation and the context-extension rescalings of HF's `rope_scaling`.

Pair i of the rotated part (the first `rotary_dim` = head_dim * partial_rotary_factor channels) is
(x[i], x[i + r/2]), rotated by angle pos * inv_freq[i] with inv_freq[i] = theta^(-2i/r).
Scalings (factor s, original context L):
- linear (position interpolation, Chen et al. 2023): inv_freq / s.
- ntk (NTK-aware, bloc97 2023): theta' = theta * s^(r/(r-2)), fixed.
- dynamic (dynamic NTK, Qwen / HF): at sequence length n > L, theta' = theta * (s*n/L - (s-1))^(r/(r-2)).
- yarn (Peng et al. 2023): per-frequency blend of interpolation and extrapolation by a ramp between
  beta_fast and beta_slow rotations over L, and cos/sin scaled by the temperature 0.1*ln(s) + 1.
- llama3 (Meta 2024): wavelengths above L/low_freq_factor divided by s, below L/high_freq_factor kept,
  smooth blend between.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def rope_inv_freq(cfg, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """(inv_freq (rotary_dim/2,) float64, attention factor) for cfg's rope_scaling."""
    r, base, rs, kind = cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling or {}, cfg.rope_type
    exps = torch.arange(0, r, 2, dtype=torch.float64) / r
    s = rs.get("factor", 1.0)
    if kind == "ntk":
        base = base * s ** (r / (r - 2))
    if kind == "dynamic":
        L = dynamic_original_length(cfg)
        n = max(seq_len or 0, L)
        base = base * (s * n / L - (s - 1)) ** (r / (r - 2))
    inv = 1.0 / base ** exps
    if kind == "linear":
        return inv / s, 1.0
    if kind == "yarn":
        return _yarn(cfg, rs, inv, base, r, s)
    if kind == "llama3":
        L = rs["original_max_position_embeddings"]
        lo, hi = rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > L / lo, inv / s, inv)
        smooth = (L / wavelen - lo) / (hi - lo)
        blended = (1 - smooth) * scaled / s + smooth * scaled
        medium = (wavelen >= L / hi) & (wavelen <= L / lo)
        return torch.where(medium, blended, scaled), 1.0
    return inv, 1.0


def dynamic_original_length(cfg) -> int:
    """Dynamic NTK's trained context L: rope_scaling's original_max_position_embeddings when given
    (so a model can be fine-tuned past L), else max_position_embeddings (HF's reading)."""
    return (cfg.rope_scaling or {}).get("original_max_position_embeddings") or cfg.max_position_embeddings


def _yarn(cfg, rs: dict, inv: torch.Tensor, base: float, r: int, s: float) -> tuple[torch.Tensor, float]:
    L = rs.get("original_max_position_embeddings") or cfg.max_position_embeddings
    att = rs.get("attention_factor")
    if att is None:
        mscale, mscale_all = rs.get("mscale"), rs.get("mscale_all_dim")
        m = (lambda k: 0.1 * k * math.log(s) + 1.0 if s > 1 else 1.0)
        att = m(mscale) / m(mscale_all) if mscale and mscale_all else m(1.0)
    fast, slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1

    def dim_for(rotations):  # the channel index completing `rotations` turns over L positions
        return r * math.log(L / (rotations * 2 * math.pi)) / (2 * math.log(base))

    lo, hi = dim_for(fast), dim_for(slow)
    if rs.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, r - 1)
    hi = hi + 0.001 if lo == hi else hi
    ramp = ((torch.arange(r // 2, dtype=torch.float64) - lo) / (hi - lo)).clamp(0, 1)
    extrapolate = 1 - ramp  # 1: keep the original frequency, 0: interpolate by s
    return inv / s * (1 - extrapolate) + inv * extrapolate, float(att)


class RotaryEmbedding(nn.Module):
    def __init__(self, cfg, max_positions: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.dynamic = cfg.rope_type == "dynamic"
        cos, sin = self._table(max_positions or cfg.max_position_embeddings, None)
        # buffers are not saved: they are a function of the config. `sin` carries rotate_half's
        # sign (-sin on the first half) so applying RoPE is cat + mul + addcmul, no negation.
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _table(self, n: int, seq_len: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq, att = rope_inv_freq(self.cfg, seq_len)
        freqs = torch.outer(torch.arange(n, dtype=torch.float64), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        half = inv_freq.numel()
        sign = torch.cat([-torch.ones(half), torch.ones(half)]).double()
        return (emb.cos() * att).float(), (emb.sin() * sign * att).float()

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, T) or (T,) -> cos, sin broadcastable to (B, H, T, rotary_dim)."""
        cos_t, sin_t = self.cos, self.sin
        if self.dynamic:  # dynamic NTK: past the trained context, re-derive theta for this length
            n = int(positions.max()) + 1
            if n > dynamic_original_length(self.cfg):
                cos_t, sin_t = (t.to(self.cos.device) for t in self._table(n, n))
        cos, sin = cos_t[positions], sin_t[positions]
        if positions.dim() == 2:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return cos.to(dtype), sin.to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x*cos + rotate_half(x)*sin with rotate_half(x) = (-x2, x1); the minus lives in `sin`.
    With partial rotation (cos narrower than x) the remaining channels pass through unchanged."""
    r = cos.shape[-1]
    if r < x.shape[-1]:
        return torch.cat((apply_rope(x[..., :r], cos, sin), x[..., r:]), dim=-1)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos, torch.cat((x2, x1), dim=-1), sin)
