"""The persistent index: one SQLite database (sources, chunks with their vectors, an FTS5 table,
metadata) plus a FAISS inner-product index over the chunk vectors.

Crash safety: SQLite is the source of truth. Each batch of documents is written in one
transaction (WAL journal, synchronous=FULL) that also bumps `generation`; a kill at any moment
leaves the database at the last committed batch. The FAISS file is a cache: it is written to a
temporary file and renamed into place, and a sidecar records the generation it reflects; if the
two disagree on open (a kill between commit and save) it is rebuilt from the vectors in SQLite.

Sources are keyed by `source_key`: a file by its resolved absolute path. An index written before
that (keys as the paths were typed) is migrated once, on its first open.
"""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np

from llmlab.checkpoint import atomic_write_bytes
from llmlab.errors import UserError
from llmlab.log import get_logger

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, sha256 TEXT NOT NULL,
    title TEXT NOT NULL, lang TEXT NOT NULL, meta TEXT NOT NULL, n_chars INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY, source_id INTEGER NOT NULL REFERENCES sources(id)
    ON DELETE CASCADE, ord INTEGER NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL,
    text TEXT NOT NULL, tokens TEXT NOT NULL, vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_source ON chunks(source_id);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(tokens, tokenize='unicode61');
"""
DB, FAISS, FAISS_META = "index.sqlite", "vectors.faiss", "vectors.json"
KEYS = "resolved"  # meta source_keys: the sources are keyed by source_key (absent: as typed, before session 16)


def source_key(source: str) -> str:
    """The name a source is stored under: a file (or a JSONL record, `file#id`) by its resolved absolute
    path, so `a.md`, `./a.md`, its absolute path and a symlink to it are one source; any other name
    (`wiki_en:3`, a path that is not an existing file) as given."""
    cuts = [len(source)] + [i for i, c in enumerate(source) if c == "#"]
    for i in cuts:
        if os.path.isfile(source[:i]):
            return os.path.realpath(source[:i]) + source[i:]
    return source


class Store:
    def __init__(self, root: str | Path, create: bool = False):
        self.root = Path(root)
        if not (self.root / DB).is_file():
            if not create:
                raise UserError(f"no index at {self.root} (create one with: llmlab rag index index={self.root} paths=...)")
            self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.root / DB, isolation_level=None)  # explicit BEGIN/COMMIT
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.root / DB}: not a usable index database ({e})") from None
        self._faiss = None
        if self.get_meta("source_keys") != KEYS:
            self._resolve_source_keys()

    def _resolve_source_keys(self) -> None:
        """Migrate an index written with the paths as typed: each source that names an existing file
        (a relative one from the current directory) gets its `source_key`; sources that turn out to be
        one file keep the copy written last (the highest id; its chunks, FTS rows and vectors) and
        the others are deleted, so nothing is retrieved twice. Runs once (meta source_keys)."""
        groups: dict[str, list[tuple[int, str]]] = {}
        for sid, path in self.db.execute("SELECT id, path FROM sources ORDER BY id"):
            groups.setdefault(source_key(path), []).append((sid, path))
        changed = {k: g for k, g in groups.items() if len(g) > 1 or g[0][1] != k}
        if not changed:
            self.set_meta("source_keys", KEYS)
            return
        with self.transaction():  # bumps generation: the FAISS cache is rebuilt without the dropped chunks
            for key, group in changed.items():
                *dropped, (keep, path) = group
                for sid, _ in dropped:
                    self.delete_source(sid)
                self.db.execute("UPDATE sources SET path=? WHERE id=?", (key, keep))
            self.set_meta("source_keys", KEYS)
        n = sum(len(g) - 1 for g in changed.values())
        get_logger().info(f"rag: {self.root}: file source(s) now named by their resolved paths ({len(changed)} "
                          f"renamed{f', {n} duplicate copies of the same files dropped' if n else ''})")

    # ---- metadata
    def get_meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    @property
    def generation(self) -> int:
        return self.get_meta("generation", 0)

    # ---- writes (call inside `with store.transaction():`)
    def transaction(self):
        store = self

        class _Tx:
            def __enter__(self):
                store.db.execute("BEGIN IMMEDIATE")

            def __exit__(self, et, ev, tb):
                if et is None:
                    store.set_meta("generation", store.generation + 1)
                    store.db.execute("COMMIT")
                else:
                    store.db.execute("ROLLBACK")
                return False
        return _Tx()

    def source(self, path: str):
        return self.db.execute("SELECT id, sha256 FROM sources WHERE path=?", (path,)).fetchone()

    def delete_source(self, source_id: int) -> None:
        self.db.execute("DELETE FROM chunks_fts WHERE rowid IN (SELECT id FROM chunks WHERE source_id=?)", (source_id,))
        self.db.execute("DELETE FROM chunks WHERE source_id=?", (source_id,))
        self.db.execute("DELETE FROM sources WHERE id=?", (source_id,))

    def insert(self, path, sha, title, lang, meta, n_chars, chunks, token_lists, vectors) -> None:
        cur = self.db.execute("INSERT INTO sources (path, sha256, title, lang, meta, n_chars) VALUES (?,?,?,?,?,?)",
                              (path, sha, title, lang, json.dumps(meta), n_chars))
        sid = cur.lastrowid
        for i, (c, toks, v) in enumerate(zip(chunks, token_lists, vectors)):
            joined = " ".join(toks)
            cid = self.db.execute('INSERT INTO chunks (source_id, ord, start, "end", text, tokens, vector) '
                                  "VALUES (?,?,?,?,?,?,?)",
                                  (sid, i, c.start, c.end, c.text, joined, np.asarray(v, np.float32).tobytes())).lastrowid
            self.db.execute("INSERT INTO chunks_fts (rowid, tokens) VALUES (?, ?)", (cid, joined))

    # ---- reads
    def count(self, table: str) -> int:
        return self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    def chunk_rows(self, ids: list[int]) -> dict[int, tuple]:
        if not ids:
            return {}
        q = ('SELECT c.id, c.text, s.path, s.title, c.start, c."end" FROM chunks c JOIN sources s ON s.id = c.source_id '
             f"WHERE c.id IN ({','.join('?' * len(ids))})")
        return {r[0]: r[1:] for r in self.db.execute(q, ids)}

    def all_tokens(self) -> tuple[np.ndarray, list[list[str]]]:
        rows = self.db.execute("SELECT id, tokens FROM chunks ORDER BY id").fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64), [r[1].split() for r in rows]

    def all_vectors(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.db.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        return ids, vecs

    def fts(self, tokens: list[str], k: int) -> list[tuple[int, float]]:
        if not tokens:
            return []
        q = " OR ".join('"' + t.replace('"', '""') + '"' for t in tokens)
        rows = self.db.execute("SELECT rowid, bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ? "
                               "ORDER BY bm25(chunks_fts) LIMIT ?", (q, k)).fetchall()
        return [(r[0], -r[1]) for r in rows]  # FTS5's bm25() is negated: lower is better

    # ---- the FAISS cache
    def vector_index(self, dim: int):
        """FAISS IndexIDMap2(IndexFlatIP) over chunk ids, or (ids, matrix) when faiss is missing."""
        gen = self.generation
        if self._faiss is not None and self._faiss[0] == gen:
            return self._faiss[1]
        try:
            import faiss
        except ImportError:  # portable fallback: exact search with numpy
            index = self.all_vectors(dim)
            self._faiss = (gen, index)
            return index
        path, side = self.root / FAISS, self.root / FAISS_META
        index = None
        try:
            if json.loads(side.read_text())["generation"] == gen:
                index = faiss.read_index(str(path))
                if index.ntotal != self.count("chunks"):
                    index = None
        except (OSError, ValueError, KeyError, RuntimeError):
            index = None
        if index is None:  # stale or missing (a kill after commit, before save): rebuild from SQLite
            ids, vecs = self.all_vectors(dim)
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
            if len(ids):
                index.add_with_ids(vecs, ids)
            atomic_write_bytes(path, faiss.serialize_index(index).tobytes())
            atomic_write_bytes(side, json.dumps({"generation": gen}).encode())
        self._faiss = (gen, index)
        return index

    def close(self) -> None:
        self.db.close()
