"""The training loop of train_kernel.c in plain Python/numpy: the fallback where no C compiler
exists (about 1000x slower), and the oracle the kernel is tested against (same random stream,
same order of updates, one thread).
"""
from __future__ import annotations

import numpy as np

M64 = (1 << 64) - 1
MAX_EXP, EXP_TABLE_SIZE = 6.0, 1000


class SplitMix64:
    def __init__(self, seed: int):
        self.s = seed & M64

    def next(self) -> int:
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)


def exp_table() -> np.ndarray:
    x = ((np.arange(EXP_TABLE_SIZE, dtype=np.float32) / np.float32(EXP_TABLE_SIZE) * np.float32(2) - np.float32(1))
         * np.float32(MAX_EXP))
    e = np.exp(x).astype(np.float32)
    return (e / (e + np.float32(1))).astype(np.float32)


def _sigmoid(table, f):
    return table[int((f + MAX_EXP) * (EXP_TABLE_SIZE / MAX_EXP / 2))]


def _predict(a, h, target, alpha, work, table, rng):
    f32 = np.float32
    if a["hs"]:
        for d in range(int(a["codelens"][target])):
            row = a["syn1"][a["points"][target, d]]
            f = float(np.dot(h, row))
            if f <= -MAX_EXP or f >= MAX_EXP:
                continue
            g = f32((f32(1) - f32(a["codes"][target, d]) - _sigmoid(table, f)) * alpha)
            work += g * row
            row += g * h
    for d in range(a["negative"] + 1 if a["negative"] else 0):
        t, label = target, f32(1)
        if d > 0:
            r = rng.next()
            col = ((r >> 32) * a["vocab_size"]) >> 32
            t = col if (r & 0xFFFFFFFF) < a["alias_prob"][col] else int(a["alias_idx"][col])
            if t == target:
                continue
            label = f32(0)
        row = a["syn1neg"][t]
        f = float(np.dot(h, row))
        s = f32(1) if f >= MAX_EXP else f32(0) if f <= -MAX_EXP else _sigmoid(table, f)
        g = f32((label - s) * alpha)
        work += g * row
        row += g * h


def _rows(a, w):
    if a["sub_idx"] is None:
        return [w]
    return a["sub_idx"][a["sub_start"][w]:a["sub_start"][w + 1]].tolist()


def epoch(a: dict) -> int:
    """The jobs a["job_starts"] of one epoch, one thread (the same fields as kernel.W2VArgs).
    Returns the number of words kept after subsampling."""
    table = exp_table()
    starts, jobs = a["sent_starts"], a["job_starts"]
    alpha0, min_alpha = a["alpha"], a["min_alpha"]
    trained = 0
    for j in range(a["njobs"]):
        s0, s1 = int(jobs[j]), int(jobs[j + 1])
        rng = SplitMix64(a["seed"] ^ ((0xD1B54A32D192ED03 * (s0 + 1)) & M64))
        alpha = job_alpha(alpha0, min_alpha, a["words_before"] + int(starts[s0]), a["total_words"])
        for s in range(s0, s1):
            trained += _train_sentence(a, s, rng, alpha, table)
    return trained


def job_alpha(alpha, min_alpha, words_before: int, total_words: int) -> np.float32:
    """A job's learning rate, fixed for the job: linear from alpha to min_alpha in the corpus
    words before the job over all epochs' words (gensim's _get_next_alpha on pushed words)."""
    alpha, min_alpha = np.float32(alpha), np.float32(min_alpha)
    frac = np.float32(words_before / total_words)
    return max(np.float32(alpha - (alpha - min_alpha) * frac), min_alpha)


def _train_sentence(a, s, rng, alpha, table) -> int:
    """Subsample sentence s and train on it; returns the words kept."""
    syn0, dim, window = a["syn0"], a["dim"], a["window"]
    starts, ids, keep = a["sent_starts"], a["ids"], a["keep"]
    sen = []
    for p in range(starts[s], starts[s + 1]):
        w = int(ids[p])
        if keep is not None and int(keep[w]) < (rng.next() >> 32):
            continue
        sen.append(w)
    n = len(sen)
    for i in range(n):
        b = rng.next() % window if window > 1 else 0
        lo, hi = max(0, i - window + b), min(n, i + window - b + 1)
        if a["sg"] and a["sub_idx"] is None:
            for c in range(lo, hi):
                if c == i:
                    continue
                work = np.zeros(dim, np.float32)
                _predict(a, syn0[sen[c]].copy(), sen[i], alpha, work, table, rng)
                syn0[sen[c]] += work
        elif a["sg"]:  # fastText: one mean per centre word, its rows updated once
            rows = _rows(a, sen[i])
            h = syn0[rows].sum(0) * np.float32(1 / len(rows))
            work = np.zeros(dim, np.float32)
            for c in range(lo, hi):
                if c != i:
                    _predict(a, h, sen[c], alpha, work, table, rng)
            for r in rows:
                syn0[r] += work
        else:
            ctx = [r for c in range(lo, hi) if c != i for r in _rows(a, sen[c])]
            if not ctx:
                continue
            h = syn0[ctx].sum(0)
            inv = np.float32(1.0 / len(ctx))
            if a["cbow_mean"]:
                h = h * inv
            work = np.zeros(dim, np.float32)
            _predict(a, h, sen[i], alpha, work, table, rng)
            if not a["cbow_mean"]:
                work *= inv
            for r in ctx:
                syn0[r] += work
    return n


def uniform_init(n: int, seed: int, scale: float) -> np.ndarray:
    """The kernel's llmlab_uniform_init in numpy (splitmix64 is counter-based, so vectorises)."""
    g = np.uint64(0x9E3779B97F4A7C15)
    i = np.arange(n, dtype=np.uint64)
    block = i >> np.uint64(16)
    with np.errstate(over="ignore"):
        z = (np.uint64(seed & M64) ^ (g * (block + np.uint64(1)))) + g * ((i & np.uint64(65535)) + np.uint64(1))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    u = (z >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16777216.0)
    return (u - np.float32(0.5)) * np.float32(scale)
