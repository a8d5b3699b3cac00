"""Vocabulary: one pass over the sentences counts words and keeps the corpus as temporary ids;
the vocabulary is then sorted by descending count (ties: first occurrence; gensim 4 puts the
word seen last first, which matters when comparing evaluations restricted to the top-k words)
and cut by `min_count` and `max_vocab_size`; the corpus becomes an int32 id array with sentence
offsets.

Subsampling (Mikolov et al. 2013) follows the reference word2vec.c, not the paper: with
t = sample * (total words) and c = a word's count, keep it with probability
    min(1, (sqrt(c / t) + 1) * t / c)
(the paper discards with probability 1 - sqrt(t / f), f the relative frequency; gensim uses the
C code's formula, as we do).

Negative samples are drawn from the unigram distribution raised to 3/4,
P(w) = c_w^0.75 / sum_v c_v^0.75, through an alias table (Vose 1991): O(1) per draw and exact,
where word2vec.c's 1e8-entry table rounds rare words' probabilities.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from llmlab.errors import UserError


@dataclass
class Vocab:
    words: list[str]
    counts: np.ndarray  # int64, descending

    def __post_init__(self):
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)


@dataclass
class Corpus:
    ids: np.ndarray          # int32 word ids (out-of-vocabulary words dropped)
    sent_starts: np.ndarray  # int64, len = sentences + 1
    raw_tokens: int          # tokens read, before dropping rare words


def build(sentences: Iterable[list[str]], min_count: int = 5, max_vocab_size: int = 0) -> tuple[Vocab, Corpus]:
    """Count, sort, cut and encode in one pass over `sentences`."""
    tmp: dict[str, int] = {}
    ids = array("i")
    lens = array("q")
    for sent in sentences:
        get = tmp.setdefault
        ids.extend([get(w, len(tmp)) for w in sent])
        lens.append(len(sent))
    raw = len(ids)
    if raw == 0:
        raise UserError("the corpus is empty: no tokens were read (check 'sources'/'files')")
    tmp_ids = np.frombuffer(ids, dtype=np.int32)
    counts = np.bincount(tmp_ids, minlength=len(tmp)).astype(np.int64)
    order = np.argsort(-counts, kind="stable")  # ties keep first-occurrence order
    order = order[counts[order] >= min_count]
    if max_vocab_size:
        order = order[:max_vocab_size]
    if len(order) == 0:
        raise UserError(f"the vocabulary is empty: no word occurs min_count={min_count} times "
                        f"in {raw} tokens; lower min_count")
    words_by_tmp = list(tmp)
    vocab = Vocab([words_by_tmp[i] for i in order], counts[order])
    remap = np.full(len(tmp), -1, dtype=np.int32)
    remap[order] = np.arange(len(order), dtype=np.int32)
    new = remap[tmp_ids]
    keep = new >= 0
    sent_of = np.repeat(np.arange(len(lens)), np.frombuffer(lens, dtype=np.int64))
    kept_lens = np.bincount(sent_of[keep], minlength=len(lens))
    starts = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(kept_lens, out=starts[1:])
    return vocab, Corpus(np.ascontiguousarray(new[keep]), starts, raw)


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """word2vec.c's keep probability per word (1 where sample == 0). sample > 1 is an absolute
    count threshold, as in gensim."""
    counts = np.asarray(counts, dtype=np.float64)
    if sample <= 0:
        return np.ones_like(counts)
    threshold = sample if sample >= 1.0 else sample * counts.sum()
    return np.minimum(1.0, (np.sqrt(counts / threshold) + 1.0) * threshold / counts)


def keep_table(counts: np.ndarray, sample: float) -> np.ndarray:
    """Keep probabilities as uint32 thresholds (p * (2^32 - 1)): a word is kept when a uniform
    32-bit draw is <= its threshold (gensim's `sample_int`)."""
    return np.round(keep_probabilities(counts, sample) * 4294967295.0).astype(np.uint32)


def noise_distribution(counts: np.ndarray, power: float = 0.75) -> np.ndarray:
    w = np.asarray(counts, dtype=np.float64) ** power
    return w / w.sum()


def alias_table(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose's alias method: column i is kept with probability prob[i] (as uint32 / 2^32), else
    its alias is returned. A draw: column uniform in [0, n), then a 32-bit coin."""
    n = len(probs)
    scaled = np.asarray(probs, dtype=np.float64) * n
    prob = np.ones(n, dtype=np.float64)
    alias = np.arange(n, dtype=np.int32)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    prob_u32 = np.minimum(np.round(prob * 4294967296.0), 4294967295.0).astype(np.uint32)
    prob_u32[prob >= 1.0] = 4294967295  # always keep (the coin is < 2^32 - 1 all but 2^-32 of the time)
    return prob_u32, alias


def alias_distribution(prob_u32: np.ndarray, alias: np.ndarray) -> np.ndarray:
    """The exact distribution an alias table samples (for tests)."""
    n = len(prob_u32)
    keep = prob_u32.astype(np.float64) / 4294967296.0
    keep[prob_u32 == 4294967295] = 1.0
    out = keep.copy()
    np.add.at(out, alias, 1.0 - keep)
    return out / n
