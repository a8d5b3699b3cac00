"""Training word2vec (Mikolov et al. 2013: CBOW and skip-gram, hierarchical softmax and/or
negative sampling) and fastText (Bojanowski et al. 2017: the same objectives with each word's
input being the mean of its own and its character n-grams' rows).

Per epoch the corpus (int32 ids) is cut into ~1M-token slices; each slice is one call of the C
kernel (threads inside), so the progress bar moves and the learning rate decays linearly from
`alpha` to `min_alpha` over epochs * corpus words, as in word2vec.c and gensim.
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
    fields = dict(syn0=syn0, syn1=syn1, syn1neg=syn1neg, dim=d, ids=corpus.ids, keep=keep,
                  alias_prob=alias_prob, alias_idx=alias_idx, vocab_size=v, codes=codes, points=points,
                  codelens=codelens, max_code=0 if codes is None else codes.shape[1], sub_start=sub_start,
                  sub_idx=sub_idx, sg=int(s.sg), hs=int(s.hs), negative=int(s.negative), window=int(s.window),
                  cbow_mean=int(s.cbow_mean), nthreads=max(1, int(s.workers)), alpha=s.alpha,
                  min_alpha=s.min_alpha)
    n_tok = len(corpus.ids)
    total = max(1, s.epochs * n_tok)
    # slice boundaries (sentence indices) of ~SLICE_TOKENS tokens
    cuts = np.unique(np.searchsorted(corpus.sent_starts, np.arange(0, n_tok, SLICE_TOKENS), side="right") - 1)
    cuts = np.append(cuts[cuts < len(corpus.sent_starts) - 1], len(corpus.sent_starts) - 1)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="w", unit_scale=True, desc="embed train", disable=not progress, leave=False)
    t0, trained = time.perf_counter(), 0
    for epoch in range(s.epochs):
        for k in range(len(cuts) - 1):
            starts = corpus.sent_starts[cuts[k]:cuts[k + 1] + 1]
            before = epoch * n_tok + int(starts[0])
            seed = _epoch_seed(s.seed, epoch) ^ int(cuts[k])
            if lib is not None:
                args = kernel.W2VArgs(**{f: (_ptr(x) if isinstance(x, np.ndarray) or x is None else x)
                                         for f, x in fields.items()},
                                      sent_starts=starts.ctypes.data, nsent=len(starts) - 1,
                                      total_words=total, words_before=before, seed=seed)
                if lib.llmlab_w2v_epoch(ctypes.byref(args)) != 0:
                    raise MemoryError("embedding kernel: out of memory")
                trained += args.trained
            else:
                trained += reference.epoch(dict(fields, sent_starts=starts, total_words=total,
                                                words_before=before, seed=seed))
            bar.update(int(starts[-1] - starts[0]))
    bar.close()
    secs = time.perf_counter() - t0
    get_logger().info(f"embed: {s.epochs} epochs over {n_tok:,} words in {secs:.1f}s "
                      f"({s.epochs * n_tok / max(secs, 1e-9):,.0f} words/s, {trained:,} kept after subsampling)")
    if s.fasttext:
        return WordVectors.from_fasttext(vocab.words, syn0[:v], syn0[v:], sub_start, sub_idx,
                                         s.min_n, s.max_n, s.bucket, counts=vocab.counts)
    return WordVectors(vocab.words, syn0, counts=vocab.counts)
