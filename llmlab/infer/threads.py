"""Intra-op threads for inference forwards, chosen by measuring.

On a small machine shared with other jobs, a parallel region costs a scheduler time slice
whenever another core is taken, so 2 threads can be several times slower than 1 under load and
faster when idle (figures: docs/LOG.md, "Threads under load"). GEMM bits do not depend on the
thread count (where MKL's do for some row counts, as on the AVX-512 Xeon at 2 threads, the engine
runs at 1 thread: `llmlab.infer.fused.mkl_rule`), so `ThreadTuner` times every layer and keeps the
faster count per kind of step.
Thread setup itself (how many, `num_threads`) is `llmlab.device`'s.
"""
from __future__ import annotations

import contextlib
import time

import torch

from llmlab.device import num_threads


class ThreadTuner:
    """Chooses the intra-op thread count of each layer of a forward by measuring them.

    Per kind of step, an exponential average of seconds per layer for each candidate count. The
    first forward of a kind tries every candidate on one layer each (layers 0, 1, ...) and runs
    its remaining layers at the faster: a bad guess costs one layer, not a whole step (a 2,048-row
    prefill step at the wrong count costs seconds). Later forwards run at the best count, except
    one layer at the other count every `explore_every` forwards (a shared machine's load
    changes: 2 threads can be many times slower than 1 under load and faster when idle; docs/LOG.md)."""

    def __init__(self, max_threads: int, explore_every: int = 8):
        self.cands = sorted({1, max(1, max_threads)})
        self.explore_every = explore_every
        self.cost: dict = {}
        self.calls: dict = {}

    def best(self, kind) -> int:
        known = [n for n in self.cands if (kind, n) in self.cost]
        return min(known, key=lambda n: self.cost[(kind, n)]) if known else self.cands[-1]

    def start(self, kind, n_layers: int) -> int | None:
        """Begin a forward of this kind -> the layer that re-tries the other count, or None."""
        c = self.calls[kind] = self.calls.get(kind, 0) + 1
        if len(self.cands) > 1 and n_layers > 1 and c % self.explore_every == 0:
            return c // self.explore_every % n_layers
        return None

    def pick(self, kind, layer: int, explore: int | None) -> int:
        """Thread count for this layer: an unmeasured count first, else the best (or the other one
        on the exploring layer)."""
        unknown = [n for n in self.cands if (kind, n) not in self.cost]
        if unknown:
            return unknown[-1]
        best = self.best(kind)
        if layer == explore:
            return next(n for n in self.cands if n != best)
        return best

    def record(self, kind, n: int, seconds: float) -> None:
        key = (kind, n)
        self.cost[key] = seconds if key not in self.cost else 0.7 * self.cost[key] + 0.3 * seconds

    def record_layers(self, kind, counts: list[int], seconds: list[float]) -> None:
        """`record` for each layer in order (counts[i] threads took seconds[i]), in one call."""
        cost = self.cost
        for n, sec in zip(counts, seconds):
            key = (kind, n)
            old = cost.get(key)
            cost[key] = sec if old is None else 0.7 * old + 0.3 * sec


def run_layers(tuner: "ThreadTuner | None", kind, n_layers: int, layer, fixed: int | None = None) -> None:
    """layer(i) for i in range(n_layers), each at the thread count the tuner picks (CPU), timed."""
    if tuner is None or fixed:
        with num_threads(fixed) if fixed else contextlib.nullcontext():
            for i in range(n_layers):
                layer(i)
        return
    explore = tuner.start(kind, n_layers)
    for i in range(n_layers):
        n = tuner.pick(kind, i, explore)
        t0 = time.perf_counter()
        with num_threads(n):
            layer(i)
        tuner.record(kind, n, time.perf_counter() - t0)


def run_c_tuned(tuner, kind, n_layers: int, run, secs: torch.Tensor | None = None):
    """run(threads, secs) once for a one-call forward (the C decoder layers), threads one count per
    layer as `run_layers` picks them (the tuner's best, one layer at the other count every
    `explore_every` forwards; the first forward tries each count on one layer), with each layer's
    seconds recorded from the C call's own timers (into secs, a float64 (n_layers,) buffer, or a new one)."""
    if tuner is None:
        return run(torch.get_num_threads(), None)
    explore = tuner.start(kind, n_layers)
    unknown = [n for n in tuner.cands if (kind, n) not in tuner.cost]
    if unknown:  # first forward: layer i tries unknown[i], the rest the largest count
        picks = (unknown[::-1] + [tuner.cands[-1]] * n_layers)[:n_layers]
    else:  # = [tuner.pick(kind, i, explore) for each layer], without a call per layer
        best = tuner.best(kind)
        picks = [best] * n_layers
        if explore is not None and explore < n_layers:
            picks[explore] = next(n for n in tuner.cands if n != best)
    secs = torch.zeros(n_layers, dtype=torch.float64) if secs is None else secs
    with num_threads(max(picks)):
        out = run(picks, secs)
    tuner.record_layers(kind, picks, secs.tolist())
    return out
