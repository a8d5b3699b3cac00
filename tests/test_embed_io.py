"""Vector files read by gensim, evaluation against gensim's, CLI errors (exit 2, one line)."""
import subprocess
import sys

import numpy as np
import pytest

from llmlab.embed import evaluate, formats, vocab as V
from llmlab.embed.vectors import WordVectors
from llmlab.embed.word2vec import TrainSettings, train
from llmlab.errors import UserError

gensim = pytest.importorskip("gensim")
from gensim.models import KeyedVectors  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    from llmlab.embed.corpus import iter_sentences
    vocab, corpus = V.build(iter_sentences(["wiki_en"], max_tokens=150_000), min_count=3)
    return train(vocab, corpus, TrainSettings(sg=0, epochs=5, vector_size=32, alpha=0.05, seed=1), progress=False)


@pytest.mark.parametrize("name", ["v.vec", "v.txt", "v.bin"])
def test_gensim_reads_our_files(trained, tmp_path, name):
    p = formats.save(trained, tmp_path / name)
    g = KeyedVectors.load_word2vec_format(str(p), binary=name.endswith(".bin"))
    assert g.index_to_key == trained.words
    ours = formats.load(p)
    np.testing.assert_array_equal(g.vectors, ours.vectors)  # same parse of the same file
    np.testing.assert_allclose(ours.vectors, trained.vectors, rtol=1e-5, atol=1e-7)
    if name.endswith(".bin"):
        np.testing.assert_array_equal(ours.vectors, trained.vectors)


def test_we_read_gensims_files(trained, tmp_path):
    g = KeyedVectors(trained.vector_size)
    g.add_vectors(trained.words[:50], trained.vectors[:50])
    for binary in (False, True):
        p = tmp_path / f"g.{'bin' if binary else 'vec'}"
        g.save_word2vec_format(str(p), binary=binary)
        np.testing.assert_allclose(formats.load(p).vectors, trained.vectors[:50], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("text,line", [("2 3\na 1 2 3\nb 1 2\n", 3), ("2 3\na 1 2 x\nb 1 2 3\n", 2),
                                       ("x y\n", 1), ("3 2\na 1 2\nb 1 2\n", 4), ("1 2\na 1 2\nb 1 2\n", 3)])
def test_malformed_file_names_the_line(tmp_path, text, line):
    p = tmp_path / "bad.vec"
    p.write_text(text)
    with pytest.raises(UserError, match=f"line {line}"):
        formats.load(p)


def test_analogies_and_similarity_match_gensim(trained, tmp_path):
    p = formats.save(trained, tmp_path / "v.bin")
    g = KeyedVectors.load_word2vec_format(str(p), binary=True)
    q = evaluate.gensim_test_file("questions-words.txt")
    g_acc, g_sections = g.evaluate_word_analogies(str(q), restrict_vocab=30000)
    ours = evaluate.analogies(trained, q, restrict=30000)
    assert ours["total"] > 1000 and ours["correct"] >= 3
    assert ours["accuracy"] == pytest.approx(g_acc, abs=1e-12)
    by_name = {s["section"]: s for s in g_sections}
    for s in ours["sections"]:
        if s["total"]:
            assert s["correct"] == len(by_name[s["section"]]["correct"])
    for fname in evaluate.SIMILARITY_SETS.values():
        path = evaluate.gensim_test_file(fname)
        _, (rho, _), oov = g.evaluate_word_pairs(str(path))
        r = evaluate.word_pairs(trained, path)
        assert r["spearman"] == pytest.approx(rho, abs=1e-6)
        assert r["oov_ratio"] * 100 == pytest.approx(oov, abs=1e-6)


def test_3cosmul_matches_gensim(trained):
    g = KeyedVectors(trained.vector_size)
    g.add_vectors(trained.words, trained.vectors)
    unit = trained.unit()
    checked = 0
    for a, b, c in [("man", "king", "woman"), ("france", "paris", "germany"), ("he", "his", "she")]:
        if not all(w in trained.index for w in (a, b, c)):
            continue
        # gensim's most_similar_cosmul: whole vocabulary, epsilon 1e-6 (ours defaults to the paper's 1e-3)
        want = g.most_similar_cosmul(positive=[b, c], negative=[a], topn=1)[0][0]
        ia, ib, ic = (trained.index[w] for w in (a, b, c))
        score = evaluate.analogy_scores(unit, [ia], [ib], [ic], "mul", eps=1e-6)[:, 0]
        score[[ia, ib, ic]] = -np.inf
        assert trained.words[int(np.argmax(score))] == want
        checked += 1
    assert checked >= 2


def test_spearman_matches_scipy():
    from scipy.stats import spearmanr
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 10, 60), rng.normal(size=60)
    assert evaluate.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)


def test_nearest_excludes_the_query_and_unknown_word_errors():
    kv = WordVectors(["a", "b", "c"], np.array([[1, 0], [0.9, 0.1], [0, 1]], np.float32))
    assert [w for w, _ in kv.most_similar(["a"], topn=2)] == ["b", "c"]
    with pytest.raises(UserError, match="'zz' is not in the vocabulary"):
        kv.vector("zz")


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "llmlab.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_bad_input_is_one_line_exit_2(trained, tmp_path, capsys):
    from llmlab.cli import main

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    small = tmp_path / "small.txt"
    small.write_text("a b c\nd e f\n")
    vec = formats.save(trained, tmp_path / "v.vec")
    bad = tmp_path / "bad.vec"
    bad.write_text("2 3\na 1 2 3\nb 1 two 3\n")
    cases = [(["embed", "train", f"files={empty}", f"output_dir={tmp_path}/o"], "corpus is empty"),
             (["embed", "train", f"files={small}", "min_count=2", f"output_dir={tmp_path}/o"], "vocabulary is empty"),
             (["embed", "nearest", f"vectors={vec}", "words=qqqzzz"], "'qqqzzz' is not in the vocabulary"),
             (["embed", "analogy", f"vectors={vec}", "positive=king,qqqzzz", "negative=man"], "'qqqzzz'"),
             (["embed", "eval", f"vectors={bad}"], "bad.vec: line 3"),
             (["embed", "train", "model=bert"], "model must be")]
    for args, msg in cases:  # in-process (the CLI's own main); one case through a real process below
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err
    r = _cli(*cases[2][0])
    assert r.returncode == 2 and cases[2][1] in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_cli_train_files_then_nearest(tmp_path):
    f = tmp_path / "c.txt"
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    f.write_text("\n".join(" ".join(rng.choice(words, 12)) for _ in range(300)))
    from llmlab.cli import main
    assert main(["embed", "train", f"files={f}", "model=fasttext", "bucket=1000", "min_count=1", "epochs=1",
                 "progress=false", f"output_dir={tmp_path}/ft"]) == 0
    r = _cli("embed", "nearest", f"vectors={tmp_path}/ft", "words=w1,w1x", "topn=3")  # w1x: OOV via n-grams
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 2


def test_own_files_bom_and_latin1(tmp_path):
    """A leading UTF-8 BOM is not part of the first word; a Latin-1 file names its first bad line."""
    from llmlab.embed.corpus import iter_sentences
    from llmlab.errors import UserError
    f = tmp_path / "bom.txt"
    f.write_bytes(b"\xef\xbb\xbfHello world\r\nhello again\r\n")
    assert list(iter_sentences(files=[f])) == [["hello", "world"], ["hello", "again"]]
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"ok\nok\ncaf\xe9\n")
    with pytest.raises(UserError, match=r"corpus file .*latin\.txt:3: not UTF-8 text \(byte 0xe9 at column 4\)"):
        list(iter_sentences(files=[latin]))


def test_word2vec_run_over_a_fasttext_folder_drops_its_ngrams(trained, tmp_path):
    """A word2vec run into a folder an earlier fastText run wrote: its n-grams are not loaded with the new vectors."""
    from llmlab.embed.recipe import load_vectors, save_run
    (tmp_path / "ngrams.npy").write_bytes(b"stale")
    (tmp_path / "subwords.json").write_text('{"min_n": 3, "max_n": 6, "bucket": 10}')
    save_run(trained, tmp_path)
    assert trained.ngrams is None and load_vectors(str(tmp_path)).ngrams is None
    assert not (tmp_path / "ngrams.npy").exists()


def test_failed_save_keeps_the_previous_run(tmp_path, monkeypatch, capsys):
    """`embed train` writes its files into a temporary folder that replaces output_dir only when all
    are written: a failure after vectors.vec, inside vectors.bin, leaves the previous run as it was."""
    from llmlab.cli import main
    f = tmp_path / "c.txt"
    rng = np.random.default_rng(0)
    f.write_text("\n".join(" ".join(rng.choice([f"w{i}" for i in range(30)], 10)) for _ in range(200)))
    out = tmp_path / "o"
    args = ["embed", "train", f"files={f}", "min_count=1", "epochs=1", "vector_size=8", "progress=false",
            f"output_dir={out}"]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"vectors.vec", "vectors.bin", "report.json"} <= set(before)
    real_save = formats.save

    def failing_save(kv, path, binary=None):
        if str(path).endswith(".bin"):
            open(path, "wb").write(b"half a file")
            raise OSError("No space left on device")
        return real_save(kv, path, binary)
    monkeypatch.setattr(formats, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        main(args[:-2] + ["seed=2", f"output_dir={out}"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "o"]  # no temporary folder left
    assert main(args[:-1] + [f"output_dir={tmp_path}"]) == 2  # a folder of other things: refused before training
    assert "holds other files (c.txt, o)" in capsys.readouterr().err


ZH = "我们今天下午去公园散步，然后回家吃晚饭。\n北京是中国的首都，上海是一个很大的城市。\n"


def test_chinese_files_are_segmented_with_jieba_and_say_so(tmp_path, caplog):
    """segment=auto on files of unsegmented Chinese: jieba words, not one "word" per line, and one log
    line saying so; already segmented Chinese and English files stay split on whitespace."""
    import logging

    from llmlab.embed.corpus import iter_sentences, words_zh
    f = tmp_path / "zh.txt"
    f.write_text(ZH * 3, encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="llmlab"):
        sents = list(iter_sentences(files=[f]))
    assert sents[:2] == [words_zh(line) for line in ZH.splitlines()] and "北京" in sents[1]
    notes = [r.message for r in caplog.records if "jieba" in r.message]
    assert len(notes) == 1 and "segment=whitespace" in notes[0], notes
    caplog.clear()
    seg = tmp_path / "seg.txt"
    seg.write_text("我们 今天 下午 去 公园 散步\n北京 是 中国 的 首都\n", encoding="utf-8")
    en = tmp_path / "en.txt"
    en.write_text("Hello, world.\n", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="llmlab"):
        assert list(iter_sentences(files=[seg]))[1] == ["北京", "是", "中国", "的", "首都"]
        assert list(iter_sentences(files=[en])) == [["hello,", "world."]]
        assert list(iter_sentences(files=[f], segment="whitespace"))[1] == ["北京是中国的首都，上海是一个很大的城市。"]
    assert not [r for r in caplog.records if "jieba" in r.message]


def test_chinese_files_without_jieba_stop_with_one_line(tmp_path, monkeypatch, capsys):
    """No jieba installed: `embed train files=<Chinese>` stops before training, one line saying what
    to install (or segment=whitespace), exit code 2."""
    from llmlab.cli import main
    f = tmp_path / "zh.txt"
    f.write_text(ZH * 3, encoding="utf-8")
    monkeypatch.setitem(sys.modules, "jieba", None)  # import jieba -> ImportError
    assert main(["embed", "train", f"files={f}", "min_count=1", f"output_dir={tmp_path}/o"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install jieba" in err and "segment=whitespace" in err, err
    assert not (tmp_path / "o").exists()
