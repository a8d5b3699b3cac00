"""word2vec/fastText building blocks against hand computations and gensim; the C kernel against
the Python reference loop."""
import numpy as np
import pytest

from llmlab.embed import huffman, kernel, reference, subwords, vocab as V
from llmlab.embed import word2vec
from llmlab.embed.word2vec import TrainSettings, train

gensim = pytest.importorskip("gensim")


def test_huffman_hand_checked():
    # counts 5,3,2,1,1: merges (1+1)=2, (2_inner+2)=4, (3+4)=7, (5+7)=12; an inner node wins ties
    codes, points, lens = huffman.huffman_codes([5, 3, 2, 1, 1])
    want = {0: ([0], [3]), 1: ([1, 0], [3, 2]), 2: ([1, 1, 1], [3, 2, 1]),
            3: ([1, 1, 0, 1], [3, 2, 1, 0]), 4: ([1, 1, 0, 0], [3, 2, 1, 0])}
    for w, (c, p) in want.items():
        assert lens[w] == len(c)
        assert codes[w, :lens[w]].tolist() == c and points[w, :lens[w]].tolist() == p


def test_huffman_optimal_and_normalised():
    rng = np.random.default_rng(0)
    counts = np.sort(rng.integers(1, 10_000, 300))[::-1]
    codes, points, lens = huffman.huffman_codes(counts)
    assert np.all(np.diff(lens) >= 0)  # a frequent word's code is never longer
    assert abs(np.sum(2.0 ** -lens.astype(float)) - 1) < 1e-12  # a full binary tree
    # same expected code length as gensim's (heap-built) Huffman tree
    from gensim.models import Word2Vec
    m = Word2Vec(vector_size=4, min_count=1, hs=1, negative=0)
    m.build_vocab_from_freq({f"w{i}": int(c) for i, c in enumerate(counts)})
    g_len = np.array([len(m.wv.get_vecattr(f"w{i}", "code")) for i in range(len(counts))])
    assert np.sum(counts * lens) == np.sum(counts * g_len)
    # leaf probabilities prod sigmoid((1-2code) u.h) sum to one
    u, h = rng.normal(size=(len(counts) - 1, 8)), rng.normal(size=8)
    total = sum(np.prod(1 / (1 + np.exp(-(1 - 2 * codes[w, :lens[w]].astype(int)) * (u[points[w, :lens[w]]] @ h))))
                for w in range(len(counts)))
    assert abs(total - 1) < 1e-9


def test_negative_sampling_distribution():
    counts = np.array([1000, 400, 150, 60, 20, 5, 1], dtype=np.int64)
    want = counts ** 0.75 / np.sum(counts ** 0.75)
    prob, alias = V.alias_table(V.noise_distribution(counts))
    assert np.allclose(V.alias_distribution(prob, alias), want, atol=1e-9)
    from gensim.models import Word2Vec
    m = Word2Vec(vector_size=4, min_count=1, negative=5)
    m.build_vocab_from_freq({f"w{i}": int(c) for i, c in enumerate(counts)})
    g = np.diff(np.concatenate([[0], m.cum_table])) / m.cum_table[-1]
    order = [m.wv.key_to_index[f"w{i}"] for i in range(len(counts))]
    assert np.allclose(g[order], want, atol=1e-8)
    # the kernel's draw (column from the high 32 bits, coin from the low 32), 200k draws
    r = np.random.default_rng(1).integers(0, 2**63, 200_000, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    col = ((r >> np.uint64(32)) * np.uint64(len(counts))) >> np.uint64(32)
    coin = r & np.uint64(0xFFFFFFFF)
    draw = np.where(coin < prob[col].astype(np.uint64), col, alias[col.astype(np.int64)])
    freq = np.bincount(draw.astype(np.int64), minlength=len(counts)) / len(draw)
    assert np.allclose(freq, want, atol=4 * np.sqrt(want * (1 - want) / len(draw)) + 1e-4)


def test_subsampling_keep_probability_is_word2vec_c():
    counts = np.array([5000, 800, 60, 3], dtype=np.int64)
    t = 1e-3 * counts.sum()
    p = V.keep_probabilities(counts, 1e-3)
    assert p[0] == pytest.approx((np.sqrt(5000 / t) + 1) * t / 5000)
    assert p[-1] == 1.0
    from gensim.models import Word2Vec
    m = Word2Vec(vector_size=4, min_count=1, sample=1e-3)
    m.build_vocab_from_freq({f"w{i}": int(c) for i, c in enumerate(counts)})
    g = np.array([m.wv.get_vecattr(f"w{i}", "sample_int") for i in range(4)]) / (2**32 - 1)
    assert np.allclose(p, g, atol=1e-9)


def test_vocab_sorted_cut_and_encoded():
    sents = [["b", "a", "b", "c"], ["a", "b", "d", "d"], ["c"]]
    vocab, corpus = V.build(sents, min_count=2)
    assert vocab.words == ["b", "a", "c", "d"] and vocab.counts.tolist() == [3, 2, 2, 2]
    assert corpus.ids.tolist() == [0, 1, 0, 2, 1, 0, 3, 3, 2] and corpus.sent_starts.tolist() == [0, 4, 8, 9]
    vocab, corpus = V.build(sents, min_count=1, max_vocab_size=2)
    assert vocab.words == ["b", "a"] and corpus.sent_starts.tolist() == [0, 3, 5, 5]


@pytest.mark.parametrize("word", ["hello", "café", "中华人民", "a", "naïveté"])
def test_ngram_hashes_match_gensim(word):
    from gensim.models.fasttext import ft_ngram_hashes
    from gensim.models.fasttext_inner import compute_ngrams, ft_hash_bytes
    assert subwords.char_ngrams(word, 3, 6) == compute_ngrams(word, 3, 6)
    assert subwords.ngram_buckets(word, 3, 6, 2_000_000) == ft_ngram_hashes(word, 3, 6, 2_000_000)
    for g in compute_ngrams(word, 3, 6):
        assert subwords.ft_hash(g.encode()) == ft_hash_bytes(g.encode())
    lib = kernel.load()
    if lib is not None:
        b = f"<{word}>".encode()
        buf = np.zeros(256, dtype=np.uint32)
        n = lib.llmlab_ft_ngrams(b, len(b), 3, 6, 2_000_000, buf.ctypes.data, 256)
        assert buf[:n].tolist() == ft_ngram_hashes(word, 3, 6, 2_000_000)


def test_fnv1a_documented_values():
    # FNV-1a 32-bit test vectors (Fowler/Noll/Vo); fastText's variant equals it on ASCII
    assert subwords.ft_hash(b"") == 0x811C9DC5
    assert subwords.ft_hash(b"a") == 0xE40C292C
    assert subwords.ft_hash(b"foobar") == 0xBF9CF968
    assert subwords.char_ngrams("hello", 3, 3) == ["<he", "hel", "ell", "llo", "lo>"]


def _toy():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    p = 1 / np.arange(1, 31)
    sents = [[words[i] for i in rng.choice(30, size=int(rng.integers(3, 25)), p=p / p.sum())] for _ in range(40)]
    return V.build(sents, min_count=1)


CASES = [dict(sg=1, hs=0, negative=5), dict(sg=0, hs=0, negative=5), dict(sg=1, hs=1, negative=0),
         dict(sg=0, hs=1, negative=3), dict(sg=1, negative=5, fasttext=True), dict(sg=0, negative=5, fasttext=True)]


def test_jobs_and_their_learning_rates_are_gensims():
    """Jobs of up to JOB_WORDS words and one learning rate per job from the words pushed before
    it: the batches and alphas gensim's Word2Vec._job_producer puts on its queue."""
    import queue

    from gensim.models import Word2Vec

    rng = np.random.default_rng(1)
    sents = [[f"w{i}" for i in rng.integers(0, 50, int(n))] for n in rng.integers(1, 40, 300)]
    m = Word2Vec(vector_size=4, min_count=1, batch_words=100, epochs=3, alpha=0.03, min_alpha=0.001)
    m.build_vocab(sents)
    total = sum(map(len, sents))
    q = queue.Queue()
    m._job_producer(iter(sents), q, cur_epoch=1, total_words=total)
    jobs = [q.get() for _ in range(q.qsize())][:-m.workers]  # then one None per worker
    starts = np.concatenate([[0], np.cumsum([len(x) for x in sents])])
    ours = word2vec.job_starts(starts, 100)
    assert np.diff(ours).tolist() == [len(batch) for batch, _ in jobs]
    for j, (_, alpha) in enumerate(jobs):
        got = reference.job_alpha(0.03, 0.001, 1 * total + int(starts[ours[j]]), 3 * total)
        assert got == pytest.approx(alpha, rel=1e-6)
    # a sentence longer than a job is a job alone
    assert word2vec.job_starts(np.array([0, 5, 250, 260]), 100).tolist() == [0, 1, 2, 3]


def test_one_thread_does_not_depend_on_how_jobs_are_grouped_into_kernel_calls(monkeypatch):
    """Each job's random stream and learning rate come from its position in the corpus, so
    cutting the epoch into more kernel calls changes nothing (one thread: bit-identical)."""
    vocab, corpus = _toy()
    monkeypatch.setattr(word2vec, "JOB_WORDS", 50)
    s = TrainSettings(vector_size=16, window=3, epochs=2, sg=1, seed=5)
    a = train(vocab, corpus, s, progress=False)
    monkeypatch.setattr(word2vec, "SLICE_TOKENS", 120)
    b = train(vocab, corpus, s, progress=False)
    assert a.vectors.tobytes() == b.vectors.tobytes()
    monkeypatch.setattr(word2vec, "JOB_WORDS", 10_000)
    assert train(vocab, corpus, s, progress=False).vectors.tobytes() != a.vectors.tobytes()


@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_reference_loop(case, monkeypatch):
    if kernel.load() is None:
        pytest.skip("no C compiler")
    vocab, corpus = _toy()
    monkeypatch.setattr(word2vec, "JOB_WORDS", 60)  # ~10 jobs: per-job learning rates and streams
    s = TrainSettings(vector_size=16, window=3, epochs=2, sample=1e-2, seed=3, bucket=50, min_n=2, max_n=3, **case)
    fast = train(vocab, corpus, s, progress=False)
    monkeypatch.setattr(kernel, "_LIB", [None])
    slow = train(vocab, corpus, s, progress=False)
    assert np.abs(fast.vectors).max() > 1e-3
    np.testing.assert_allclose(fast.vectors, slow.vectors, atol=2e-5)
    if case.get("fasttext"):
        np.testing.assert_allclose(fast.ngrams, slow.ngrams, atol=2e-5)


def test_seeded_runs_are_bit_identical_and_threads_work():
    vocab, corpus = _toy()
    s = TrainSettings(vector_size=16, window=3, epochs=2, sg=1, seed=7)
    a, b = train(vocab, corpus, s, progress=False), train(vocab, corpus, s, progress=False)
    assert a.vectors.tobytes() == b.vectors.tobytes()
    s.seed = 8
    assert train(vocab, corpus, s, progress=False).vectors.tobytes() != a.vectors.tobytes()
    s.workers = 2
    assert np.isfinite(train(vocab, corpus, s, progress=False).vectors).all()


def test_fasttext_oov_vector_from_ngrams():
    vocab, corpus = _toy()
    kv = train(vocab, corpus, TrainSettings(vector_size=8, epochs=1, fasttext=True, bucket=100, min_n=2, max_n=3),
               progress=False)
    b = subwords.ngram_buckets("w3x", 2, 3, 100)
    assert "w3x" not in kv.index
    np.testing.assert_allclose(kv.vector("w3x"), kv.ngrams[b].mean(0), rtol=1e-6)
    assert np.linalg.norm(kv.vector("w3x")) > 0


def test_reference_is_the_fallback(monkeypatch):
    monkeypatch.setattr(kernel, "_LIB", [None])
    vocab, corpus = _toy()
    kv = train(vocab, corpus, TrainSettings(vector_size=8, epochs=1, sg=1), progress=False)
    assert np.isfinite(kv.vectors).all() and reference.SplitMix64(1).next() != reference.SplitMix64(2).next()


def test_initial_vectors_word2vec_c_range_and_gensim_4_twice_as_wide():
    """Epochs 0 returns the initial input rows: uniform in [-0.5/d, 0.5/d) as word2vec.c.
    gensim 4 (the benchmark's peer) draws from [-1/d, 1/d): a known difference (docs/embed.md)."""
    from gensim.models.keyedvectors import prep_vectors

    vocab, corpus = _toy()
    d = 50
    x = train(vocab, corpus, TrainSettings(vector_size=d, epochs=0, sg=1), progress=False).vectors
    g = prep_vectors(x.shape, seed=1)
    assert np.abs(x).max() <= 0.5 / d and np.abs(x).max() > 0.45 / d
    np.testing.assert_allclose(x.std(), 0.5 / d / np.sqrt(3), rtol=0.05)  # uniform's std
    np.testing.assert_allclose(g.std(), 2 * x.std(), rtol=0.05)
