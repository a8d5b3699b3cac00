"""Pipeline bubble (Huang et al. 2019, GPipe; Narayanan et al. 2021 sec. 2.2): with p stages and
m micro-batches of equal forward+backward time, each stage idles p - 1 slots out of m + p - 1, so

    bubble fraction = (p - 1) / (m + p - 1)

(the same for GPipe and 1F1B; 1F1B only lowers the activation memory to p micro-batches in flight).

With measured inputs: if stage i takes t_i per micro-batch (forward + backward) and a point-to-point
transfer of one micro-batch's activations (or their gradient) takes c seconds, with sends
overlapping compute (the schedules post them asynchronously), the critical path is the fill and
drain through every stage, m - 1 more micro-batches at the pace of the slowest stage, and one
transfer per stage boundary each way:

    wall = sum_i t_i + (m - 1) max_i t_i + 2 (p - 1) c,    busy_i = m t_i,
    bubble = 1 - m mean_i(t_i) / wall

which is (p - 1) / (m + p - 1) when all t_i are equal and c << t. The pipelining runtime itself
(schedule bookkeeping, the loss, autograd around the stage) takes o seconds per micro-batch on every
stage, occupied but not computing: t_i + o replaces t_i in the wall, busy stays m t_i. The benchmark
(benchmarks/distributed.py) measures t_i inside the run (`Stage.busy_seconds` / m) and c on the
run's own process group (`llmlab.distributed.pipeline.p2p_seconds`).
"""
from __future__ import annotations


def bubble_fraction(stages: int, micro_batches: int) -> float:
    if stages < 1 or micro_batches < 1:
        raise ValueError("stages and micro_batches must be >= 1")
    return (stages - 1) / (micro_batches + stages - 1)


def bubble_fraction_measured(micro_seconds: list[float], micro_batches: int, p2p_seconds: float = 0.0,
                             overhead_seconds: float = 0.0) -> float:
    """The bubble from each stage's measured compute seconds per micro-batch, one p2p transfer time and
    the runtime's own seconds per micro-batch on every stage (occupied, not computing; see above)."""
    p = len(micro_seconds)
    if p < 1 or micro_batches < 1 or min(micro_seconds) <= 0 or p2p_seconds < 0 or overhead_seconds < 0:
        raise ValueError("need >= 1 stage, micro_batches >= 1, positive stage times, p2p and overhead >= 0")
    occupied = [t + overhead_seconds for t in micro_seconds]
    wall = sum(occupied) + (micro_batches - 1) * max(occupied) + 2 * (p - 1) * p2p_seconds
    return 1.0 - micro_batches * sum(micro_seconds) / p / wall


def measured_bubble(busy_seconds: list[float], wall_seconds: float) -> float:
    """1 - mean busy time / wall time over the stages (what a schedule actually idled)."""
    return 1.0 - sum(busy_seconds) / len(busy_seconds) / wall_seconds
