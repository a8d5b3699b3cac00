"""Learning-rate schedules as pure functions of the step, so resuming needs only the step number.

All start with linear warmup from 0 to the peak over `warmup_steps` (GPT-3, LLaMA), then:
- cosine: peak -> min_lr along half a cosine until max_steps (Loshchilov & Hutter 2017; LLaMA ends at 10%).
- linear: peak -> min_lr linearly.
- wsd: warmup-stable-decay (Hu et al. 2024, MiniCPM): hold the peak, then decay linearly over the
  last `decay_ratio` of steps. The stable phase lets a run be extended or branched without a restart.
- constant: hold the peak after warmup.
"""
from __future__ import annotations

import math


def lr_factor(step: int, kind: str, max_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0,
              decay_ratio: float = 0.2) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based: the first update is 0)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps  # the first update already moves (HF/nanoGPT start at lr 0: a no-op step)
    if kind == "constant":
        return 1.0
    if kind == "wsd":
        decay_steps = max(1, round(decay_ratio * max_steps))
        start = max(warmup_steps, max_steps - decay_steps)
        if step < start:
            return 1.0
        progress = min(1.0, (step - start + 1) / max(1, max_steps - start))
        return 1.0 - (1.0 - min_lr_ratio) * progress
    progress = min(1.0, (step - warmup_steps + 1) / max(1, max_steps - warmup_steps))
    if kind == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * progress
    raise ValueError(f"unknown lr_scheduler_type '{kind}' (cosine, linear, wsd, constant)")
