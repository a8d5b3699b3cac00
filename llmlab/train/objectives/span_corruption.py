"""T5 span corruption (Raffel et al. 2020, §3.1.4): drop ~noise_density of the tokens in spans of
mean length mean_noise_span_length, replace each dropped span by one sentinel in the input, and
make the target the dropped spans, each after its sentinel:

    tokens   Thank you for inviting me to your party last week .
    inputs   Thank you <X> me to your party <Y> week .
    targets  <X> for inviting <Y> last <Z>

A readable re-implementation of the T5 codebase's `random_spans_noise_mask` and
`noise_span_to_unique_sentinel` (t5/data/preprocessors.py), with the same arithmetic:

    num_noise  = clip(round(n * noise_density), 1, n - 1)     (round half to even, as tf.round)
    num_spans  = max(round(num_noise / mean_noise_span_length), 1)
    the noise tokens are cut into num_spans non-empty spans, the others likewise, by a random
    segmentation; spans alternate non-noise, noise, non-noise, ... (the first token is never noise)

so len(inputs) = n - num_noise + num_spans and len(targets) = num_noise + num_spans (+1 each for
EOS when one is appended, as T5 does). Sentinel k is `sentinel_ids[k]`; T5's are vocab_size-1-k
(<extra_id_0> is the last id), which is how llmlab.train.objectives.special allots them too.
"""
from __future__ import annotations

import numpy as np

from llmlab.errors import UserError


def noise_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(num_noise_tokens, num_noise_spans) for a sequence of `length` tokens, as T5 computes them."""
    length = max(length, 2)
    # float32 arithmetic, as the T5 codebase's tf.cast(..., tf.float32)
    num_noise = int(np.round(np.float32(length) * np.float32(noise_density)))
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = max(int(np.round(np.float32(num_noise) / np.float32(mean_noise_span_length))), 1)
    return num_noise, num_spans


def random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Cut num_items into num_segments non-empty runs uniformly at random -> run lengths.

    T5: mark num_segments-1 of the num_items-1 gaps as cuts (a shuffled 0/1 vector), segment ids
    are the running count of cuts."""
    cuts = np.zeros(num_items - 1, dtype=np.int64)
    cuts[: num_segments - 1] = 1
    rng.shuffle(cuts)
    segment_id = np.concatenate([[0], np.cumsum(cuts)])
    return np.bincount(segment_id, minlength=num_segments)


def random_spans_noise_mask(length: int, noise_density: float, mean_noise_span_length: float,
                            rng: np.random.Generator) -> np.ndarray:
    """Boolean (length,) mask, True = noise; spans as described in the module docstring."""
    orig_length = length
    length = max(length, 2)
    num_noise, num_spans = noise_counts(length, noise_density, mean_noise_span_length)
    noise_lengths = random_segmentation(num_noise, num_spans, rng)
    nonnoise_lengths = random_segmentation(length - num_noise, num_spans, rng)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)  # non-noise first
    span_id = np.repeat(np.arange(2 * num_spans), interleaved)
    return (span_id % 2 == 1)[:orig_length]


def noise_span_to_unique_sentinel(tokens, noise_mask: np.ndarray, sentinel_ids) -> list[int]:
    """Replace each run of masked tokens by the next sentinel; drop the rest of the run."""
    out, k, prev = [], 0, False
    for tok, noise in zip(tokens, noise_mask):
        if noise and not prev:
            if k >= len(sentinel_ids):
                raise UserError(f"span corruption needs more than {len(sentinel_ids)} sentinel tokens for "
                                "this window: raise the number of sentinels or lower max_length")
            out.append(int(sentinel_ids[k]))
            k += 1
        elif not noise:
            out.append(int(tok))
        prev = bool(noise)
    return out


def span_corrupt(tokens, noise_mask: np.ndarray, sentinel_ids, eos_id: int | None = None) -> tuple[list[int], list[int]]:
    """-> (inputs, targets) as T5's span_corruption builds them; EOS appended to both when given."""
    noise_mask = np.asarray(noise_mask, dtype=bool)
    inputs = noise_span_to_unique_sentinel(tokens, noise_mask, sentinel_ids)
    targets = noise_span_to_unique_sentinel(tokens, ~noise_mask, sentinel_ids)
    if eos_id is not None:
        inputs, targets = inputs + [eos_id], targets + [eos_id]
    return inputs, targets


def corrupted_lengths(n: int, noise_density: float, mean_noise_span_length: float, eos: bool) -> tuple[int, int]:
    """(len(inputs), len(targets)) that span_corrupt gives for n tokens (T5's random_spans_helper)."""
    num_noise, num_spans = noise_counts(n, noise_density, mean_noise_span_length)
    return n - num_noise + num_spans + eos, num_noise + num_spans + eos


def raw_length_for(budget: int, noise_density: float, mean_noise_span_length: float, eos: bool) -> int:
    """The most raw tokens whose inputs + targets fit in `budget` tokens (decoder-only: both in one row)."""
    n = budget
    while n > 2 and sum(corrupted_lengths(n, noise_density, mean_noise_span_length, eos)) > budget:
        n -= 1
    return n


class SpanCorruption:
    """objective=span_corruption: T5's denoiser with sentinels <extra_id_0>, <extra_id_1>, ..."""
    name = "span_corruption"

    def __init__(self, noise_density: float = 0.15, mean_noise_span_length: float = 3.0, num_sentinels: int = 100):
        if not 0.0 < noise_density < 1.0:
            raise UserError(f"noise_density must be in (0, 1), got {noise_density}")
        if mean_noise_span_length < 1.0:
            raise UserError(f"mean_noise_span_length must be >= 1, got {mean_noise_span_length}")
        self.noise_density, self.mean_noise_span_length = noise_density, mean_noise_span_length
        self.special_tokens = [f"<extra_id_{k}>" for k in range(num_sentinels)]

    def example(self, tokens, rng: np.random.Generator, ids: dict[str, int], eos_id: int | None = None):
        from llmlab.train.objectives.base import Example
        sentinels = [ids[t] for t in self.special_tokens]
        n = raw_length_for(len(tokens), self.noise_density, self.mean_noise_span_length, eos_id is not None)
        toks = list(tokens[:n])
        mask = random_spans_noise_mask(n, self.noise_density, self.mean_noise_span_length, rng)
        inputs, targets = span_corrupt(toks, mask, sentinels, eos_id)
        return Example(inputs, targets)
