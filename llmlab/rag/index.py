"""The RAG index: add/update/delete documents (incremental: unchanged documents are skipped by
content hash) and search them -- dense (MiniLM + FAISS), BM25, SQLite FTS5, or hybrid (reciprocal
rank fusion of dense and BM25)."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from llmlab.data.langid import detect_language
from llmlab.errors import UserError
from llmlab.rag.bm25 import BM25, convex_fusion, reciprocal_rank_fusion, tokenize
from llmlab.rag.chunking import STRATEGIES, chunk
from llmlab.rag.loaders import Document
from llmlab.rag.store import Store, source_key

ENCODER = "all-MiniLM-L6-v2"
MODES = ("hybrid", "dense", "bm25", "fts")
FUSIONS = ("rrf", "convex")


@dataclass
class Hit:
    chunk_id: int
    score: float
    text: str
    source: str
    title: str
    start: int
    end: int


class RagIndex:
    def __init__(self, root: str | Path, create: bool = False, chunking: str = "recursive", chunk_size: int = 800,
                 chunk_overlap: int = 100, encoder=None):
        if chunking not in STRATEGIES:
            raise UserError(f"chunking: unknown strategy '{chunking}'; known: {', '.join(STRATEGIES)}")
        chunk(" ", chunking, chunk_size, chunk_overlap if chunking in ("fixed", "tokens") else 0, len)  # validate first
        self.store = Store(root, create)
        if self.store.get_meta("encoder") is None:
            with self.store.transaction():
                for k, v in (("encoder", ENCODER), ("dim", 384), ("chunking", chunking), ("chunk_size", chunk_size),
                             ("chunk_overlap", chunk_overlap)):
                    self.store.set_meta(k, v)
        self._encoder = encoder
        self._bm25 = None

    @property
    def encoder(self):
        if self._encoder is None:
            from llmlab.rag.embed import SentenceEncoder
            self._encoder = SentenceEncoder()
        return self._encoder

    def _chunks(self, text: str):
        m = self.store.get_meta
        strategy, size, overlap = m("chunking"), m("chunk_size"), m("chunk_overlap")
        count = (lambda w: len(self.encoder.tokenizer.tokenize(w))) if strategy == "tokens" else None
        return chunk(text, strategy, size, overlap if strategy in ("fixed", "tokens") else 0, count)

    # ------------------------------------------------------------------ writes
    def add(self, docs: Iterable[Document], progress: Callable[[int], None] | None = None,
            batch_chunks: int = 64) -> dict:
        """Index documents under `source_key(doc.source)` (a file: its resolved absolute path); a source
        already indexed with the same text is skipped, with other text replaced. Writes one
        transaction per batch of about `batch_chunks` chunks."""
        stats = {"added": 0, "updated": 0, "unchanged": 0, "chunks": 0}
        pending: list[tuple] = []

        def flush():
            texts = [c.text for p in pending for c in p[3]]
            vecs = self.encoder.encode(texts).numpy() if texts else np.zeros((0, 384), np.float32)
            with self.store.transaction():
                i = 0
                for doc, key, sha, chunks, old in pending:
                    if old is not None:
                        self.store.delete_source(old)
                    toks = [tokenize(c.text) for c in chunks]
                    self.store.insert(key, sha, doc.title, detect_language(doc.text[:2000]), doc.meta,
                                      len(doc.text), chunks, toks, vecs[i:i + len(chunks)])
                    i += len(chunks)
            if progress:
                progress(len(pending))
            pending.clear()

        n_pending, seen = 0, set()
        for doc in docs:
            sha = hashlib.sha256(doc.text.encode("utf-8")).hexdigest()
            key = source_key(doc.source)
            row = self.store.source(key)
            typed = self.store.source(doc.source) if row is None and key != doc.source else None
            if typed is not None:  # kept as typed by the migration (it ran from another directory): re-stored under its key
                row = (typed[0], None)
            if key in seen or (row is not None and row[1] == sha):  # seen: a file and a symlink to it
                stats["unchanged"] += 1
                if progress:
                    progress(1)
                continue
            seen.add(key)
            chunks = self._chunks(doc.text)
            stats["updated" if row else "added"] += 1
            stats["chunks"] += len(chunks)
            pending.append((doc, key, sha, chunks, row[0] if row else None))
            n_pending += len(chunks)
            if n_pending >= batch_chunks:
                flush()
                n_pending = 0
        if pending:
            flush()
        self._bm25 = None
        return stats

    def find(self, source: str) -> tuple | None:
        """(id, sha256) of a source named as stored, or as any path to the same file (also one
        deleted since: its path resolved as it would have been)."""
        for name in dict.fromkeys((source, source_key(source), os.path.realpath(source))):
            row = self.store.source(name)
            if row is not None:
                return row
        return None

    def delete(self, sources: Iterable[str]) -> int:
        n = 0
        with self.store.transaction():
            for s in sources:
                row = self.find(s)
                if row is not None:
                    self.store.delete_source(row[0])
                    n += 1
        self._bm25 = None
        return n

    def sources(self) -> list[str]:
        return [r[0] for r in self.store.db.execute("SELECT path FROM sources ORDER BY path")]

    # ------------------------------------------------------------------ reads
    def language(self) -> str:
        row = self.store.db.execute("SELECT lang, sum(n_chars) AS n FROM sources GROUP BY lang ORDER BY n DESC").fetchone()
        return row[0] if row else "other"

    def _bm25_index(self):
        gen = self.store.generation
        if self._bm25 is None or self._bm25[0] != gen:
            ids, corpus = self.store.all_tokens()
            self._bm25 = (gen, ids, BM25(corpus))
        return self._bm25[1], self._bm25[2]

    def dense_ids(self, query: str, k: int) -> list[tuple[int, float]]:
        q = self.encoder.encode([query]).numpy()
        index = self.store.vector_index(self.store.get_meta("dim"))
        if isinstance(index, tuple):  # numpy fallback
            ids, vecs = index
            s = vecs @ q[0]
            top = np.argsort(-s, kind="stable")[:k]
            return [(int(ids[i]), float(s[i])) for i in top]
        scores, ids = index.search(q, min(k, index.ntotal))
        return [(int(i), float(s)) for s, i in zip(scores[0], ids[0]) if i >= 0]

    def bm25_ids(self, query: str, k: int) -> list[tuple[int, float]]:
        ids, bm = self._bm25_index()
        return [(int(ids[i]), s) for i, s in bm.top_k(tokenize(query), k)]

    def search(self, query: str, k: int = 5, mode: str = "hybrid", candidates: int = 50,
               bm25_weight: float = 1.0, fusion: str = "rrf") -> list[Hit]:
        """Top k chunks; hybrid = `fusion` of the dense and BM25 top `candidates`, BM25's list weighted
        `bm25_weight` (the dense list 1): "rrf" on ranks, or "convex" on min-max scores (keeps margins)."""
        if mode not in MODES:
            raise UserError(f"mode: unknown retrieval mode '{mode}'; known: {', '.join(MODES)}")
        if fusion not in FUSIONS:
            raise UserError(f"fusion: unknown '{fusion}'; known: {', '.join(FUSIONS)}")
        if not query.strip():
            raise UserError("query is empty")
        if self.store.count("chunks") == 0:
            raise UserError(f"the index at {self.store.root} is empty: add documents with llmlab rag index")
        if mode == "dense":
            ranked = self.dense_ids(query, k)
        elif mode == "bm25":
            ranked = self.bm25_ids(query, k)
        elif mode == "fts":
            ranked = self.store.fts(tokenize(query), k)
        else:
            n = max(candidates, k)
            dense, sparse = self.dense_ids(query, n), self.bm25_ids(query, n)
            if fusion == "convex":
                ranked = convex_fusion([dense, sparse], weights=[1.0, bm25_weight])[:k]
            else:
                ranked = reciprocal_rank_fusion([[i for i, _ in dense], [i for i, _ in sparse]],
                                                weights=[1.0, bm25_weight])[:k]
        rows = self.store.chunk_rows([i for i, _ in ranked])
        return [Hit(i, s, *rows[i]) for i, s in ranked if i in rows]

    def __enter__(self) -> "RagIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()
