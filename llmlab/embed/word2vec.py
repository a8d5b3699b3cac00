"""Training word2vec (Mikolov et al. 2013: CBOW and skip-gram, hierarchical softmax and/or
negative sampling) and fastText (Bojanowski et al. 2017: the same objectives with each word's
input being the mean of its own and its character n-grams' rows).

The corpus (int32 ids) is cut as gensim cuts it: jobs of consecutive sentences of up to
JOB_WORDS words (gensim's batch_words), each trained at the learning rate of the corpus position
where it starts (linear from `alpha` to `min_alpha` over epochs * corpus words) with its own random
stream; threads take whole jobs. Each ~1M-token run of jobs is one call of the C kernel, so the
progress bar moves.
"""
from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass

import numpy as np

from llmlab.embed import huffman, kernel, reference, vocab as vocab_mod
from llmlab.embed.vectors import WordVectors
from llmlab.log import get_logger

SLICE_TOKENS = 1_000_000
JOB_WORDS = 10_000  # gensim's batch_words (MAX_WORDS_IN_BATCH): a job is at most this many words
# word2vec input rows start uniform in [-W/(2d), W/(2d)): W = 1 is word2vec.c's (rand - 0.5) / d;
# gensim 4's prep_vectors draws (2u - 1) / d, i.e. W = 2 (gensim 3 seeded each word's row from
# hash(word + seed) with word2vec.c's range). Kept at word2vec.c's: see docs/embed.md, "The
# word2vec analogy gap", for the measurement.
W2V_INIT_WIDTH = 1.0


@dataclass
class TrainSettings:
    """The hyperparameters, with gensim's names and defaults."""
    vector_size: int = 100
    window: int = 5
    sg: int = 0
    hs: int = 0
    negative: int = 5
    ns_exponent: float = 0.75
    cbow_mean: int = 1
    sample: float = 1e-3
    epochs: int = 5
    workers: int = 1
    alpha: float = 0.025
    min_alpha: float = 0.0001
    seed: int = 1
    fasttext: bool = False
    min_n: int = 3
    max_n: int = 6
    bucket: int = 2_000_000


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 0x9E3779B97F4A7C15 + (epoch + 1) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)


def job_starts(sent_starts: np.ndarray, job_words: int | None = None) -> np.ndarray:
    """Sentence indices where jobs start, plus the sentence count at the end: sentences are
    added to a job while it stays within job_words words (a longer sentence is a job alone),
    as gensim's _job_producer fills its jobs."""
    job_words = JOB_WORDS if job_words is None else job_words
    lengths = np.diff(sent_starts).tolist()
    starts, size = [0], 0
    for s, n in enumerate(lengths):
        if size + n > job_words and size > 0:
            starts.append(s)
            size = 0
        size += n
    starts.append(len(lengths))
    return np.asarray(starts, dtype=np.int64)


def _ptr(a):
    return None if a is None else a.ctypes.data


def train(vocab: vocab_mod.Vocab, corpus: vocab_mod.Corpus, s: TrainSettings, progress: bool = True) -> WordVectors:
    if s.hs == 0 and s.negative <= 0:
        raise ValueError("one of hs=1 or negative>0 is needed")
    if s.negative > 64:  # the C kernel's fixed buffer of drawn negatives
        raise ValueError(f"negative must be <= 64, got {s.negative}")
    v, d = len(vocab), s.vector_size
    lib = kernel.load()
    sub_start = sub_idx = None
    rows = v
    if s.fasttext:
        from llmlab.embed.subwords import subword_rows

        sub_start, sub_idx = subword_rows(vocab.words, s.min_n, s.max_n, s.bucket)
        rows = v + s.bucket
    # word2vec: uniform(-0.5/d, 0.5/d) as word2vec.c; fastText (and gensim's FastText): uniform(-1/d, 1/d)
    scale = (2.0 if s.fasttext else W2V_INIT_WIDTH) / d
    syn0 = np.empty((rows, d), dtype=np.float32)
    if lib is not None:
        lib.llmlab_uniform_init(syn0.ctypes.data, syn0.size, s.seed, scale, max(1, s.workers))
    else:
        syn0[:] = reference.uniform_init(syn0.size, s.seed, scale).reshape(rows, d)
    syn1 = np.zeros((max(v - 1, 1), d), np.float32) if s.hs else None
    syn1neg = np.zeros((v, d), np.float32) if s.negative else None
    codes = points = codelens = None
    if s.hs:
        codes, points, codelens = huffman.huffman_codes(vocab.counts)
    alias_prob, alias_idx = vocab_mod.alias_table(vocab_mod.noise_distribution(vocab.counts, s.ns_exponent))
    keep = vocab_mod.keep_table(vocab.counts, s.sample) if s.sample > 0 else None
    fields = dict(syn0=syn0, syn1=syn1, syn1neg=syn1neg, dim=d, ids=corpus.ids,
                  sent_starts=corpus.sent_starts, keep=keep, alias_prob=alias_prob, alias_idx=alias_idx,
                  vocab_size=v, codes=codes, points=points,
                  codelens=codelens, max_code=0 if codes is None else codes.shape[1], sub_start=sub_start,
                  sub_idx=sub_idx, sg=int(s.sg), hs=int(s.hs), negative=int(s.negative), window=int(s.window),
                  cbow_mean=int(s.cbow_mean), nthreads=max(1, int(s.workers)), alpha=s.alpha,
                  min_alpha=s.min_alpha)
    n_tok = len(corpus.ids)
    total = max(1, s.epochs * n_tok)
    jobs = job_starts(corpus.sent_starts)
    # kernel calls of ~SLICE_TOKENS tokens, cut at job boundaries (indices into jobs)
    cuts = np.unique(np.searchsorted(corpus.sent_starts[jobs], np.arange(0, n_tok, SLICE_TOKENS), side="right") - 1)
    cuts = np.append(cuts[cuts < len(jobs) - 1], len(jobs) - 1)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="w", unit_scale=True, desc="embed train", disable=not progress, leave=False)
    t0, trained = time.perf_counter(), 0
    for epoch in range(s.epochs):
        for k in range(len(cuts) - 1):
            part = jobs[cuts[k]:cuts[k + 1] + 1]
            call = dict(job_starts=part, njobs=len(part) - 1, total_words=total, words_before=epoch * n_tok,
                        seed=_epoch_seed(s.seed, epoch))
            if lib is not None:
                args = kernel.W2VArgs(**{f: (_ptr(x) if isinstance(x, np.ndarray) or x is None else x)
                                         for f, x in dict(fields, **call).items()})
                if lib.llmlab_w2v_epoch(ctypes.byref(args)) != 0:
                    raise MemoryError("embedding kernel: out of memory")
                trained += args.trained
            else:
                trained += reference.epoch(dict(fields, **call))
            bar.update(int(corpus.sent_starts[part[-1]] - corpus.sent_starts[part[0]]))
    bar.close()
    secs = time.perf_counter() - t0
    get_logger().info(f"embed: {s.epochs} epochs over {n_tok:,} words in {secs:.1f}s "
                      f"({s.epochs * n_tok / max(secs, 1e-9):,.0f} words/s, {trained:,} kept after subsampling)")
    if s.fasttext:
        return WordVectors.from_fasttext(vocab.words, syn0[:v], syn0[v:], sub_start, sub_idx,
                                         s.min_n, s.max_n, s.bucket, counts=vocab.counts)
    return WordVectors(vocab.words, syn0, counts=vocab.counts)
