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


def schedule_order(stages: int, micro_batches: int, schedule: str) -> list[list[tuple[str, int]]]:
    """Each stage's op order, as torch.distributed.pipelining runs it: GPipe F0..F(m-1) then
    B0..B(m-1); 1F1B (PipeDream-Flush) p - i warm-up forwards on stage i, then B/F pairs, then the
    remaining backwards."""
    if schedule not in ("gpipe", "1f1b"):
        raise ValueError(f"schedule must be gpipe or 1f1b, got {schedule!r}")
    out = []
    for i in range(stages):
        if schedule == "gpipe":
            out.append([("F", k) for k in range(micro_batches)] + [("B", k) for k in range(micro_batches)])
            continue
        w = min(stages - i, micro_batches)
        order = [("F", k) for k in range(w)]
        for k in range(micro_batches - w):
            order += [("B", k), ("F", k + w)]
        out.append(order + [("B", k) for k in range(micro_batches - w, micro_batches)])
    return out


def simulate_schedule(forward_s: list[float], backward_s: list[float], micro_batches: int, schedule: str = "gpipe",
                      gap_s: list[float] | None = None, handoff_s: float = 0.0) -> tuple[float, float]:
    """(seconds per step, bubble) of a schedule replayed op by op from measured inputs: stage i's
    forward and backward seconds per micro-batch, its runtime gap between two ops whose input is
    already there (gap_s[i]: posting sends, the loss, bookkeeping) and the hand-off latency from one
    stage finishing an op to its neighbour starting the dependent one (transfer + receive). An op
    starts at max(its stage's previous op end + gap, its input's op end + hand-off); steps run back
    to back, so a step lasts from stage 0's first op to its last op plus its gap. Bubble = 1 - mean
    busy / step. With equal stages, F = B / 2 and no gaps it is (p-1)/(m+p-1) for both schedules."""
    p, m = len(forward_s), micro_batches
    gap = list(gap_s) if gap_s is not None else [0.0] * p
    if p < 1 or m < 1 or len(backward_s) != p or len(gap) != p or min(forward_s + backward_s) <= 0 or handoff_s < 0:
        raise ValueError("need >= 1 stage, micro_batches >= 1, positive op times, one gap per stage, handoff >= 0")
    orders, end, pos, free = schedule_order(p, m, schedule), {}, [0] * p, [None] * p
    while any(pos[i] < len(orders[i]) for i in range(p)):
        moved = False
        for i in range(p):
            if pos[i] == len(orders[i]):
                continue
            kind, k = orders[i][pos[i]]
            if kind == "F":
                dep, hop = (end.get(("F", i - 1, k)), handoff_s) if i else (0.0, 0.0)
            elif i == p - 1:  # the last stage's backward follows its own forward (and the loss)
                dep, hop = end.get(("F", i, k)), 0.0
            else:
                dep, hop = end.get(("B", i + 1, k)), handoff_s
            if dep is None:
                continue
            start = max(dep + hop, free[i] + gap[i] if free[i] is not None else 0.0)
            free[i] = end[(kind, i, k)] = start + (forward_s[i] if kind == "F" else backward_s[i])
            pos[i] += 1
            moved = True
        if not moved:  # cannot happen for these schedules; guards a bad order
            raise ValueError("schedule deadlocks")
    step = free[0] + gap[0]
    return step, 1.0 - m * (sum(forward_s) + sum(backward_s)) / p / step
