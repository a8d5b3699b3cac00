import itertools

import numpy as np
import pytest

from llmlab.data.minhash import (MinHashConfig, MinHasher, NearDeduper, _universal, candidate_probability,
                                 estimate_jaccard, exact_jaccard, lsh_threshold, shingle_hashes)
from llmlab.data.sources import iter_documents


@pytest.fixture(scope="module")
def wiki():
    return list(itertools.islice(iter_documents("wiki_en"), 300))


def test_universal_hash_is_exact_mod_mersenne():
    h = MinHasher(32, seed=5)
    p = (1 << 61) - 1
    xs = np.array([0, 1, 2, 12345, 2**31, 2**32 - 1], dtype=np.uint64)
    got = _universal(xs[:, None], h.a_hi, h.a_lo, h.b[None, :])
    for i, x in enumerate(xs):
        for j in range(32):
            v = int(got[i, j])
            assert v <= p and v % p == (int(x) * int(h.a[j]) + int(h.b[j])) % p


def test_shingles():
    a = shingle_hashes("Hello   World", 5)
    assert a.size == len("hello world") - 4  # case-folded, whitespace collapsed, distinct
    assert np.array_equal(a, shingle_hashes("hello world", 5))
    assert shingle_hashes("abc", 5).size == 1 and shingle_hashes("", 5).size == 1


def test_estimate_close_to_exact_jaccard(wiki):
    h = MinHasher(128, seed=3)
    errs = []
    for i in range(60):
        x, y = wiki[i], wiki[i + 100]
        cut = len(x) * (i % 9 + 1) // 10
        a, b = shingle_hashes(x, 5), shingle_hashes(x[:cut] + y[:len(x) - cut], 5)
        errs.append(estimate_jaccard(h.signature(a), h.signature(b)) - exact_jaccard(a, b))
    errs = np.abs(errs)
    assert errs.max() < 0.15 and errs.mean() < 0.05  # std error sqrt(J(1-J)/128) <= 0.044
    sig = h.signature(shingle_hashes(wiki[0], 5))
    assert estimate_jaccard(sig, h.signature(shingle_hashes(wiki[0], 5))) == 1.0


def test_s_curve_threshold():
    b, r = 16, 8
    t = lsh_threshold(b, r)
    assert t == pytest.approx((1 / 16) ** (1 / 8)) and t == pytest.approx(0.7071, abs=1e-4)
    assert candidate_probability(0.8, b, r) == pytest.approx(1 - (1 - 0.8**8) ** 16)
    s = np.linspace(0.01, 0.99, 981)
    slope = np.gradient(candidate_probability(s, b, r), s)
    assert abs(s[np.argmax(slope)] - t) < 0.05  # the steepest point is near (1/b)^(1/r)
    assert candidate_probability(0.3, b, r) < 0.002 and candidate_probability(0.9, b, r) > 0.999


def _perturb(text, rng, rate=0.03):
    ws = text.split()
    for i in rng.choice(len(ws), size=max(1, int(len(ws) * rate)), replace=False):
        ws[i] = ws[i].upper() + "s"
    return " ".join(ws)


def test_planted_near_duplicates_are_found_and_distinct_docs_kept(wiki):
    rng = np.random.default_rng(0)
    originals = wiki[:150]
    planted = [_perturb(originals[i], rng) for i in range(0, 150, 5)]  # 30 near-copies
    d = NearDeduper(MinHashConfig())
    kept_orig = [not d.is_duplicate(x) for x in originals]
    assert all(kept_orig)  # distinct Wikipedia articles are not merged
    found = [d.is_duplicate(x) for x in planted]
    assert sum(found) >= 29
    assert d.candidates_checked >= sum(found)


def test_config_validation():
    with pytest.raises(ValueError, match="exceeds num_perm"):
        MinHashConfig(num_perm=64, bands=16, rows=8)
    with pytest.raises(ValueError):
        MinHashConfig(threshold=0)
