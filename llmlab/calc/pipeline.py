"""Pipeline bubble (Huang et al. 2019, GPipe; Narayanan et al. 2021 sec. 2.2): with p stages and
m micro-batches of equal forward+backward time, each stage idles p - 1 slots out of m + p - 1, so

    bubble fraction = (p - 1) / (m + p - 1)

(the same for GPipe and 1F1B; 1F1B only lowers the activation memory to p micro-batches in flight).
"""
from __future__ import annotations


def bubble_fraction(stages: int, micro_batches: int) -> float:
    if stages < 1 or micro_batches < 1:
        raise ValueError("stages and micro_batches must be >= 1")
    return (stages - 1) / (micro_batches + stages - 1)


def measured_bubble(busy_seconds: list[float], wall_seconds: float) -> float:
    """1 - mean busy time / wall time over the stages (what a schedule actually idled)."""
    return 1.0 - sum(busy_seconds) / len(busy_seconds) / wall_seconds
