"""Communication volume per training step, in elements of the model per rank.

Rajbhandari et al. 2020 (ZeRO, sec. 7): a ring all-reduce of psi elements is a reduce-scatter
plus an all-gather, each moving psi (N_d - 1)/N_d per rank, so DDP sends ~2 psi per step; ZeRO-1/2
do the same reduce-scatter + all-gather (2 psi); ZeRO-3 all-gathers the weights in forward and
again in backward and reduce-scatters the gradients: 3 psi, 1.5x DDP.

`collective_bytes` converts one collective to the bytes each rank sends under the ring algorithm,
the unit the counting wrapper in tests (llmlab.distributed.comm_count) reports.
"""
from __future__ import annotations


def step_volume(n_params: float, world: int, stage: int, dtype_bytes: int = 4) -> float:
    """Bytes each rank sends per step (ring algorithms): 2 psi (n-1)/n for DDP/ZeRO-1/2, 3 for ZeRO-3."""
    if world <= 1:
        return 0.0
    factor = 3.0 if stage == 3 else 2.0
    return factor * n_params * dtype_bytes * (world - 1) / world


def collective_bytes(kind: str, nbytes: float, world: int) -> float:
    """Per-rank bytes sent by a ring `kind` over a tensor of `nbytes` (the full, unsharded size)."""
    if world <= 1:
        return 0.0
    frac = (world - 1) / world
    if kind == "all_reduce":
        return 2.0 * nbytes * frac
    if kind in ("all_gather", "reduce_scatter", "broadcast"):
        return nbytes * frac
    raise ValueError(f"unknown collective {kind!r}")
