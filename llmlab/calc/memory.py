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


# --- fine-tuning memory (digest-004 sec. 1): full vs LoRA, with offload tiers -------------------
# Per parameter, by precision: (weight, gradient, optimizer bytes per optimizer-state element,
# fp32 master copy). "fp16"/"bf16" is the notes' all-16-bit case (1B params: 2 + 2 + 4 = 8 GB);
# "mixed" keeps an fp32 master + fp32 moments (ZeRO's K = 12: 2 + 2 + 12 = 16 B/param).
PRECISIONS = {"fp32": (4, 4, 4, 0), "fp16": (2, 2, 2, 0), "bf16": (2, 2, 2, 0), "mixed": (2, 2, 4, 4)}
STATES_PER_PARAM = {"adam": 2, "adamw": 2, "adamax": 2, "sgd_momentum": 1, "sgd": 0}
OFFLOAD = ("none", "optimizer", "optimizer+grads", "all")


def finetune_memory(n_params: float, precision: str = "fp32", optimizer: str = "adam", method: str = "full",
                    trainable: float | None = None, offload: str = "none",
                    optimizer_states: float | None = None) -> dict:
    """Bytes of weights, gradients and optimizer state for fine-tuning, split device / host.

    method="full": every parameter trains; "lora": `trainable` = the adapter's parameter count,
    and the frozen backbone has no gradient and no optimizer state (weights = base + adapter).
    optimizer_states overrides the element count of optimizer state (Adafactor's factored
    moments: see `optimizer_state_elements`). offload tiers (ZeRO-Offload / ZeRO-Infinity):
    "optimizer" moves the states (and fp32 master) to the host, "optimizer+grads" the gradients
    too (the CPU does the update), "all" the weights as well (device keeps only what a layer needs
    while it runs: counted 0 here). Activations are not included (see calc.activations).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if optimizer not in STATES_PER_PARAM and optimizer_states is None:
        raise ValueError(f"optimizer must be one of {sorted(STATES_PER_PARAM)} (or give optimizer_states)")
    if method not in ("full", "lora") or offload not in OFFLOAD:
        raise ValueError(f"method must be full or lora and offload one of {OFFLOAD}")
    if method == "lora" and not trainable:
        raise ValueError("method='lora' needs trainable = the adapter's parameter count")
    w, g, s, master = PRECISIONS[precision]
    n_train = n_params if method == "full" else trainable
    n_all = n_params if method == "full" else n_params + trainable
    states = optimizer_states if optimizer_states is not None else STATES_PER_PARAM[optimizer] * n_train
    parts = {"weights": w * n_all, "grads": g * n_train, "optimizer": s * states + master * n_train}
    on_host = {"none": (), "optimizer": ("optimizer",), "optimizer+grads": ("optimizer", "grads"),
               "all": ("optimizer", "grads", "weights")}[offload]
    device = {k: (0.0 if k in on_host else v) for k, v in parts.items()}
    host = {k: (v if k in on_host else 0.0) for k, v in parts.items()}
    return {**parts, "total": sum(parts.values()), "device": sum(device.values()), "host": sum(host.values()),
            "trainable": n_train}


def optimizer_state_elements(shapes, optimizer: str) -> int:
    """Exact count of optimizer-state numbers for trainable tensors of these shapes; Adafactor
    keeps a matrix's second moment as row + column vectors (Shazeer & Stern 2018)."""
    total = 0
    for shape in shapes:
        n = 1
        for d in shape:
            n *= d
        if optimizer == "adafactor":
            # row means: shape[:-1]; column means: shape[:-2] + shape[-1:]
            total += n // shape[-1] + n // shape[-2] if len(shape) >= 2 else n
        else:
            total += STATES_PER_PARAM[optimizer] * n
    return total
