"""Model-state memory per rank: weights, gradients and Adam states under DDP and ZeRO-1/2/3.

Rajbhandari et al. 2020 (ZeRO, sec. 3.1 and Fig. 1): mixed-precision Adam keeps, per parameter,
2 bytes of fp16/bf16 weight + 2 bytes of fp16 gradient + K = 12 bytes of fp32 optimizer state
(master weight, momentum, variance) = 16 bytes; keeping an fp32 copy of the gradient for the
update adds 4 (= 20). Plain fp32 Adam is 4 + 4 + 8 = 16 as well. With N_d data-parallel ranks:

    DDP     (w + g + K) psi
    ZeRO-1  (w + g) psi + K psi / N_d          optimizer states sharded
    ZeRO-2  w psi + (g + K) psi / N_d          + gradients sharded
    ZeRO-3  (w + g + K) psi / N_d              + parameters sharded (FSDP)
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StateBytes:
    weight: float  # bytes per parameter of the working weights
    grad: float  # bytes per parameter of the gradient
    optim: float  # K: bytes per parameter of optimizer state (incl. any fp32 master copy)

    @property
    def total(self) -> float:
        return self.weight + self.grad + self.optim


def bytes_per_param(precision: str = "mixed", fp32_grads: bool = False) -> StateBytes:
    """'mixed': 2 + 2 + 12 = 16 (20 with fp32 master gradients); 'fp32': 4 + 4 + 8 = 16."""
    if precision == "fp32":
        return StateBytes(4, 4, 8)
    if precision == "mixed":
        return StateBytes(2, 2, 12 + (4 if fp32_grads else 0))
    raise ValueError(f"precision must be 'mixed' or 'fp32', got {precision!r}")


def per_rank_state_bytes(n_params: float, world: int, stage: int, sb: StateBytes) -> float:
    """Bytes of weights + gradients + optimizer state on one rank; stage 0 = DDP, 1/2/3 = ZeRO."""
    if world < 1:
        raise ValueError("world must be >= 1")
    w, g, k = sb.weight * n_params, sb.grad * n_params, sb.optim * n_params
    if stage == 0:
        return w + g + k
    if stage == 1:
        return w + g + k / world
    if stage == 2:
        return w + (g + k) / world
    if stage == 3:
        return (w + g + k) / world
    raise ValueError(f"ZeRO stage must be 0 (DDP), 1, 2 or 3, got {stage}")
