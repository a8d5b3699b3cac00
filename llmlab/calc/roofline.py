"""MFU / HFU and the roofline.

- MFU (Chowdhery et al. 2022, PaLM App. B): model FLOP/s (6N + 12 L H Q T per token) over the
  peak; HFU counts the FLOPs the hardware really did, so with full activation recomputation a
  second forward: 8N per token instead of 6N (Korthikanti et al. 2022, sec. 6).
- Roofline (Williams et al. 2009): attainable FLOP/s = min(peak, intensity x bandwidth), with
  arithmetic intensity = FLOPs / bytes moved. An (m,k)x(k,n) matmul does 2mnk FLOPs over
  (mk + kn + mn) x bytes; both ceilings are measured on this machine (measure_bandwidth and
  llmlab.train.mfu.measure_matmul_flops).
"""
from __future__ import annotations

import time

import torch


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    return tokens_per_s * flops_per_token / peak_flops if peak_flops > 0 else 0.0


def hfu(tokens_per_s: float, flops_per_token: float, peak_flops: float, recompute: bool) -> float:
    """Hardware FLOPs utilisation: with full recomputation 4/3 of the model FLOPs are executed."""
    return mfu(tokens_per_s, flops_per_token * (4.0 / 3.0 if recompute else 1.0), peak_flops)


def matmul_intensity(m: int, k: int, n: int, dtype_bytes: int = 4) -> float:
    return 2.0 * m * n * k / ((m * k + k * n + m * n) * dtype_bytes)


def attainable_flops(intensity: float, peak_flops: float, bandwidth: float) -> float:
    return min(peak_flops, intensity * bandwidth)


def measure_bandwidth(nbytes: int = 64 << 20, seconds: float = 0.3) -> float:
    """Best memory bandwidth (bytes/s, read + write) of a large tensor copy on this CPU."""
    src = torch.empty(nbytes // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        dst.copy_(src)
        best = max(best, 2 * nbytes / (time.perf_counter() - t))
    return best
