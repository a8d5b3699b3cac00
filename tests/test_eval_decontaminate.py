"""Decontamination: every eval item planted in training data is found and its document removed;
clean documents stay (llmlab.eval.contamination)."""
from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys

import pytest

from llmlab.eval.contamination import EvalIndex, decontaminate, packaged_eval_sets


@pytest.fixture(scope="module")
def eval_sets():
    return packaged_eval_sets(seed=1234)


@pytest.fixture(scope="module")
def clean_docs():
    from llmlab.data.sources import poetry_en
    return list(itertools.islice(poetry_en(), 200))


def _plant(clean, eval_sets, rng, per_task=3):
    docs, planted = list(clean), {}
    for task, texts in eval_sets.items():
        for j in rng.sample(range(len(texts)), per_task):
            host = rng.choice(clean)
            cut = rng.randrange(len(host) + 1)
            docs.append(host[:cut] + "\n" + texts[j] + "\n" + host[cut:])  # an item inside a page
            planted[len(docs) - 1] = (task, j)
    return docs, planted


def test_every_planted_item_of_every_packaged_eval_set_is_removed(eval_sets, clean_docs):
    assert len(eval_sets) >= 9  # every registered task
    docs, planted = _plant(clean_docs, eval_sets, random.Random(0))
    removed = {}
    for i, (doc, hit) in enumerate(decontaminate(docs, eval_sets)):
        if hit is not None:
            removed[i] = hit
    assert set(removed) == set(planted)  # all planted documents and nothing else
    for i, (task, j) in planted.items():
        assert j in removed[i][task]


def test_short_items_match_whole_and_paraphrase_does_not():
    idx = EvalIndex(n=13)
    idx.add("What is 12 plus 34?")  # 5 words < 13: matched as a whole run of words
    idx.add("one two")  # under min_words: not checked
    assert idx.hits("Quiz time. what is 12 plus 34 ? Answer: 46") == {0}
    assert idx.hits("What is 12 plus 35?") == set()
    assert idx.too_short == 1
    long = " ".join(f"w{i}" for i in range(20))
    idx.add(long)
    assert idx.hits("prefix " + " ".join(f"w{i}" for i in range(3, 16)) + " suffix") == {2}  # any 13-gram
    assert idx.hits(" ".join(f"w{i}" for i in range(3, 15))) == set()  # 12 words: no full 13-gram


@pytest.mark.slow
def test_cli_filters_a_jsonl_and_reports(tmp_path, eval_sets, clean_docs):
    docs, planted = _plant(clean_docs[:50], eval_sets, random.Random(1), per_task=1)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": d, "source": "x"}) + "\n" for d in docs))
    r = subprocess.run([sys.executable, "-m", "llmlab.cli", "decontaminate", f"data={data}"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "train.decontaminated.jsonl"
    kept = [json.loads(x)["text"] for x in out.read_text().splitlines()]
    assert len(kept) == 50 and kept == docs[:50]
    rep = json.loads((tmp_path / "train.decontaminated.jsonl.report.json").read_text())
    assert rep["removed"] == len(planted) and all(v["items_found"] >= 1 for v in rep["per_task"].values())
    bad = subprocess.run([sys.executable, "-m", "llmlab.cli", "decontaminate", f"data={tmp_path / 'nope.jsonl'}"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not found" in bad.stderr
