"""Sampling weights that are computed, not typed: temperature sampling across languages and
curricula (data-mix schedules over training).

Temperature sampling (mT5, Xue et al. 2021; XLM, Conneau & Lample 2019): with n_i documents (or
tokens) in language i, sample it with p_i = n_i^(1/T) / sum_j n_j^(1/T). T = 1 is proportional
to size, T -> inf uniform; mT5 uses 1/T = alpha = 0.3, which lifts small languages.

Curriculum: a list of stages, each a share of the run and its source weights, e.g.
CodeGen's PILE -> BIGQUERY -> BIGPYTHON or CPM-2's Chinese-then-bilingual; `curriculum_mix`
draws each stage's documents with `llmlab.data.mix.mix_documents`, the source iterators
continuing across stages (no document is repeated), and `weights_at` gives the weights at any
point of the run (piecewise constant, or linearly blended with `blend=true`).
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from llmlab.data.mix import mix_documents
from llmlab.errors import UserError


def temperature_weights(sizes: dict[str, float], temperature: float = 1 / 0.3) -> dict[str, float]:
    """p_i = n_i^(1/T) / sum_j n_j^(1/T)."""
    if temperature <= 0:
        raise UserError(f"temperature must be > 0, got {temperature}")
    if not sizes or any(v < 0 for v in sizes.values()) or sum(sizes.values()) <= 0:
        raise UserError(f"sizes must be >= 0 with a positive total, got {sizes}")
    powered = {k: float(v) ** (1.0 / temperature) if v > 0 else 0.0 for k, v in sizes.items()}
    z = sum(powered.values())
    return {k: v / z for k, v in powered.items()}


def _check_stages(stages: Sequence[tuple[float, dict[str, float]]]) -> None:
    if not stages:
        raise UserError("curriculum: at least one stage")
    if any(share <= 0 for share, _ in stages):
        raise UserError("curriculum: every stage needs a share > 0")


def weights_at(progress: float, stages: Sequence[tuple[float, dict[str, float]]], blend: bool = False) -> dict[str, float]:
    """Normalised source weights at `progress` in [0, 1] of the run. Stage shares are relative
    (normalised to 1). blend: interpolate linearly between stage midpoints instead of steps."""
    _check_stages(stages)
    total = sum(s for s, _ in stages)
    bounds = np.cumsum([s / total for s, _ in stages])
    names = sorted({k for _, w in stages for k in w})

    def norm(w):
        z = sum(w.get(k, 0.0) for k in names)
        return np.array([w.get(k, 0.0) / z for k in names])
    if not blend:
        i = min(int(np.searchsorted(bounds, progress, side="right")), len(stages) - 1)
        vec = norm(stages[i][1])
    else:
        mids = bounds - np.array([s / total for s, _ in stages]) / 2
        vecs = np.stack([norm(w) for _, w in stages])
        vec = np.array([np.interp(progress, mids, vecs[:, j]) for j in range(len(names))])
    return {k: float(v) for k, v in zip(names, vec)}


def curriculum_mix(sources: dict[str, Callable[[], Iterable[str]]],
                   stages: Sequence[tuple[float, dict[str, float]]], total_docs: int,
                   seed: int = 0) -> Iterator[tuple[int, str, str]]:
    """Yield (stage, source, document) for `total_docs` documents, stage k taking its share."""
    _check_stages(stages)
    if total_docs <= 0:
        raise UserError(f"total_docs must be > 0, got {total_docs}")
    iters = {n: iter(f()) for n, f in sources.items()}
    shared = {n: (lambda it=it: it) for n, it in iters.items()}  # stages continue the same iterators
    total = sum(s for s, _ in stages)
    ends = np.round(np.cumsum([s / total for s, _ in stages]) * total_docs).astype(int)
    start = 0
    for k, ((_, weights), end) in enumerate(zip(stages, ends)):
        for src, doc in mix_documents(shared, weights, seed=seed + k, max_docs=int(end - start)):
            yield k, src, doc
        start = int(end)
