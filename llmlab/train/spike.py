"""Loss-spike guard.

Detection: a step is a spike when its loss is not finite, or exceeds mean + k * std of the recent
good losses (exponential moving mean and variance with horizon `window`), once `min_steps` good
steps have been seen. Spikes do not update the statistics.

Response (PaLM, Chowdhery et al. 2022, sec. 5.1: "restart from a checkpoint ~100 steps before the
spike and skip 200-500 data batches"; OPT restarts with a lower lr):
- skip: drop the batch's gradients; the optimizer, schedule and step counter do not move;
- rollback: also restore the last good checkpoint, keep the data stream moving forward past the
  bad batch (+ `spike_skip_batches` more) and optionally lower the lr.
Gradient clipping (max_grad_norm) is the first line of defence and stays on either way.
"""
from __future__ import annotations

import math


class SpikeGuard:
    def __init__(self, threshold: float = 6.0, window: int = 50, min_steps: int = 20):
        self.k, self.alpha, self.min_steps = threshold, 2.0 / (window + 1), min_steps
        self.mean, self.var, self.count = 0.0, 0.0, 0
        self.consecutive = 0

    def is_spike(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return True
        if self.count < self.min_steps:
            return False
        return loss > self.mean + self.k * math.sqrt(self.var) + 1e-6

    def update(self, loss: float) -> None:
        """Record a good step's loss."""
        self.consecutive = 0
        if self.count == 0:
            self.mean, self.var = loss, 0.0
        else:  # EW moving variance (West 1979 / Finch 2009 incremental form)
            d = loss - self.mean
            self.mean += self.alpha * d
            self.var = (1 - self.alpha) * (self.var + self.alpha * d * d)
        self.count += 1

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count, "consecutive": self.consecutive}

    def load_state_dict(self, s: dict) -> None:
        self.mean, self.var, self.count = float(s["mean"]), float(s["var"]), int(s["count"])
        self.consecutive = int(s.get("consecutive", 0))
