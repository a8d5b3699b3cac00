"""Model FLOPs utilisation (MFU, PaLM App. B): achieved model FLOP/s over the hardware ceiling.

Model FLOPs per trained token come from `llmlab.model.flops_per_token` (6N + 12 L H Q T). The
ceiling is measured, not looked up: the best FLOP/s of a large square matmul in the training
dtype on this device, in this process (so thread count and contention are the same as training).
"""
from __future__ import annotations

import time

import torch


def measure_matmul_flops(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                         n: int | None = None, seconds: float = 0.5) -> float:
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        a @ b
        sync()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    return best


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    return tokens_per_s * flops_per_token / peak_flops if peak_flops > 0 else 0.0
