"""Tail averaging of the weights: the uniform mean of the iterates over the last steps of a run.

Polyak-Ruppert averaging (Polyak & Juditsky 1992) restricted to the tail, as in stochastic weight
averaging (SWA, Izmailov et al. 2018) and LAWA (Kaddour 2022): after each of the last
`fraction * max_steps` optimizer steps the running mean is moved,

    theta_bar_k = theta_bar_{k-1} + (theta_k - theta_bar_{k-1}) / k,     k = 1, 2, ..., n,

which is exactly (1/n) sum_k theta_k. It is kept in fp32 beside the training and never feeds back
into it (the optimizer keeps stepping the online weights), so a run with averaging is the same run
as one without, up to the final swap of the averaged weights into the model. Only parameters that
train are averaged (for PEFT: the adapter's).
"""
from __future__ import annotations

import torch
from torch import nn


def average_start(max_steps: int, fraction: float) -> int:
    """The step after which averaging begins: the last round(fraction * max_steps) steps are averaged."""
    return max_steps - round(fraction * max_steps)


class TailAverage:
    """Running uniform mean of `model`'s trainable parameters after every step > `start`."""

    def __init__(self, model: nn.Module, start: int):
        self.start, self.n = start, 0
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.mean = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in self.params.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Call after optimizer step number `step` (1-based); steps <= start are not averaged."""
        if step <= self.start:
            return
        self.n += 1
        for name, p in self.params.items():
            self.mean[name].lerp_(p.detach().float(), 1.0 / self.n)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Write the mean into the model's parameters (their dtype and device)."""
        if self.n == 0:
            return
        for name, p in self.params.items():
            p.copy_(self.mean[name].to(p.dtype))

    def load(self, tensors: dict[str, torch.Tensor], n: int) -> None:
        if set(tensors) != set(self.mean):
            raise ValueError("tail average: checkpoint tensors do not match the model's trainable parameters")
        for name, t in tensors.items():
            self.mean[name].copy_(t)
        self.n = n
