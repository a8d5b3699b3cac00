"""pass@k with the unbiased estimator of Chen et al. 2021 ("Evaluating LLMs trained on code", eq. 1).

With n samples of which c pass, pass@k = 1 - C(n-c, k) / C(n, k), computed as the numerically
stable product 1 - prod_{i=n-c+1..n} (1 - k/i). Averaged over problems.
"""
from __future__ import annotations

from typing import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n} c={c} k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(num_samples: Sequence[int], num_correct: Sequence[int], k: int) -> float:
    vals = [pass_at_k(n, c, k) for n, c in zip(num_samples, num_correct)]
    return sum(vals) / len(vals) if vals else 0.0
