"""Floating-point layouts (IEEE 754 binary32/binary16 and Google's bfloat16): sign, exponent and
mantissa bits of fp32 / fp16 / bf16, their range and precision, and the bits of a given number.

  fp32  1 | 8 | 23   max 3.4e38   eps 1.2e-7
  fp16  1 | 5 | 10   max 65504    eps 9.8e-4   (smallest normal 6.1e-5: gradients underflow)
  bf16  1 | 8 | 7    max 3.4e38   eps 7.8e-3   (fp32's range, 3 significant digits)

bf16 is fp32 with the low 16 mantissa bits cut off, so converting is a shift (round to nearest
even) and nothing overflows; fp16 has 3 more mantissa bits but needs loss scaling to keep small
gradients above 6e-5 (2^-14; subnormals reach 6e-8).
"""
from __future__ import annotations

import torch

LAYOUTS = {"fp32": (torch.float32, 8, 23), "fp16": (torch.float16, 5, 10), "bf16": (torch.bfloat16, 8, 7)}
_INT = {16: torch.int16, 32: torch.int32}


def layout(name: str) -> dict:
    """Bits and limits of a format; the limits are computed from the bit counts (and equal
    torch.finfo's: tests/test_calc_floats.py)."""
    if name not in LAYOUTS:
        raise ValueError(f"format must be one of {sorted(LAYOUTS)}, got {name!r}")
    _, e, m = LAYOUTS[name]
    bias = 2 ** (e - 1) - 1
    return {"sign": 1, "exponent": e, "mantissa": m, "bits": 1 + e + m, "bias": bias,
            "max": (2 - 2.0 ** -m) * 2.0 ** bias, "smallest_normal": 2.0 ** (1 - bias),
            "smallest_subnormal": 2.0 ** (1 - bias - m), "eps": 2.0 ** -m}


def bits(x: float, name: str) -> str:
    """'s eeeeeeee mmmmmmm': the stored bits of x rounded to the format."""
    dtype, e, m = LAYOUTS[name]
    n = 1 + e + m
    v = int(torch.tensor([x], dtype=dtype).view(_INT[n]).item()) & ((1 << n) - 1)
    s = format(v, f"0{n}b")
    return f"{s[0]} {s[1:1 + e]} {s[1 + e:]}"
