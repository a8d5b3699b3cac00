"""CLI verbs: `llmlab rag index` (build or update an index), `rag query` (retrieve), `rag ask`
(retrieve, optionally rerank, answer with citations), `rag delete` (remove sources)."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from llmlab.verb import Verb, verb
from llmlab.errors import UserError, require
from llmlab.serve.retrieval import RAG_BACKENDS

VERBS: dict[str, Verb] = {}


@dataclass
class RagIndexConfig:
    index: str = field(default="rag_index", metadata={"help": "index folder (SQLite + FAISS files)"})
    paths: list[str] = field(default_factory=list, metadata={"help": "files/folders (.txt .md .html .jsonl), comma-separated"})
    source: str = field(default="", metadata={"help": "instead of paths: a packaged corpus, e.g. wiki_en"})
    limit: int = field(default=0, metadata={"help": "with source: index only the first N documents (0 = all)"})
    chunking: str = field(default="recursive", metadata={"help": "fixed | sentence | recursive | tokens (new index only)"})
    chunk_size: int = field(default=800, metadata={"help": "characters (tokens for chunking=tokens)"})
    chunk_overlap: int = field(default=100, metadata={"help": "for fixed and tokens"})
    prune: bool = field(default=False, metadata={"help": "delete indexed sources under `paths` that are gone"})


@dataclass
class RagQueryConfig:
    index: str = "rag_index"
    query: str = field(default="", metadata={"help": "the question (required)"})
    k: int = 5
    mode: str = field(default="hybrid", metadata={"help": "hybrid | dense | bm25 | fts"})
    bm25_weight: float = field(default=1.0, metadata={"help": "hybrid: weight of the BM25 list (dense = 1)"})
    fusion: str = field(default="rrf", metadata={"help": "hybrid: rrf (ranks) | convex (min-max scores, keeps margins)"})


@dataclass
class RagAskConfig(RagQueryConfig):
    model: str = field(default="smollm2", metadata={"help": "chat model that writes the answer"})
    k: int = 3
    rerank: int = field(default=0, metadata={"help": "rerank this many candidates by the LLM's P(Yes); 0 = off"})
    max_new_tokens: int = 160


@dataclass
class RagDeleteConfig:
    index: str = "rag_index"
    sources: list[str] = field(default_factory=list, metadata={"help": "files (any path to them) or sources as listed by the index"})


@dataclass
class RagEvalConfig:
    index: str = field(default="rag_eval_idx", metadata={"help": "index folder; built from the extracts if missing"})
    docs: int = field(default=2000, metadata={"help": "Wikipedia extracts to index (the first N by title)"})
    n: int = field(default=200, metadata={"help": "cloze queries for recall@k / nDCG@10"})
    n_qa: int = field(default=50, metadata={"help": "items answered by the LLM, closed-book and with retrieval (0 = none)"})
    model: str = "smollm2"
    seed: int = 0
    flare_theta: float = field(default=0.5, metadata={"help": "also answer with FLARE at this confidence threshold; 0 = off"})


def _progress(total: int | None, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="doc", file=sys.stderr, disable=None)


def _documents(cfg: RagIndexConfig):
    from llmlab.rag.loaders import Document, load_paths
    if cfg.source:
        from llmlab.data.sources import iter_documents
        docs = []
        for i, text in enumerate(iter_documents(cfg.source)):
            if cfg.limit and i >= cfg.limit:
                break
            docs.append(Document(f"{cfg.source}:{i}", text, text.split(".")[0][:80]))
        return docs, []
    require(cfg.paths, "nothing to index: pass paths=DIR_OR_FILES or source=wiki_en")
    res = load_paths(cfg.paths)
    return res.documents, res.skipped


@verb(VERBS, "rag index", RagIndexConfig)
def run_index(cfg: RagIndexConfig) -> int:
    """index documents (SQLite + FTS5 + FAISS; incremental by content hash)

    Example: llmlab rag index index=wiki_idx source=wiki_en limit=2000
    """
    from llmlab.rag.index import RagIndex
    docs, skipped = _documents(cfg)
    if not docs and skipped:  # e.g. one non-UTF-8 file: say so once, and never prune an index on it
        raise UserError(f"nothing to index: every file was skipped ({skipped[0][0]}: {skipped[0][1]}"
                        + (f"; and {len(skipped) - 1} more" if len(skipped) > 1 else "") + ")")
    for path, why in skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    with RagIndex(cfg.index, create=True, chunking=cfg.chunking, chunk_size=cfg.chunk_size,
                  chunk_overlap=cfg.chunk_overlap) as idx:
        with _progress(len(docs), "indexing") as bar:
            stats = idx.add(docs, progress=bar.update)
        if cfg.prune and cfg.paths:
            import os

            from llmlab.rag.store import source_key
            roots = [os.path.realpath(p) for p in cfg.paths]
            seen = {source_key(d.source) for d in docs}
            gone = [s for s in idx.sources() if s not in seen and any(
                s == r or s.startswith((os.path.join(r, ""), r + "#")) for r in roots)]
            stats["deleted"] = idx.delete(gone)
        idx.store.vector_index(idx.store.get_meta("dim"))  # save the FAISS file now, not at first query
        print(f"{cfg.index}: {stats} skipped={len(skipped)}; {idx.store.count('sources')} sources, "
              f"{idx.store.count('chunks')} chunks")
    return 0


def _language_note(idx, query: str) -> str:
    from llmlab.rag.answer import language_note
    return language_note(idx, query)


@verb(VERBS, "rag query", RagQueryConfig)
def run_query(cfg: RagQueryConfig) -> int:
    """retrieve chunks: hybrid (RRF of MiniLM + BM25), dense, bm25 or fts

    Example: llmlab rag query index=wiki_idx query="Who painted the Mona Lisa?"
    """
    from llmlab.rag.index import RagIndex
    require(cfg.query, 'query is empty: pass query="..."')
    with RagIndex(cfg.index) as idx:
        note = _language_note(idx, cfg.query)
        if note:
            print(f"note: {note}", file=sys.stderr)
        hits = idx.search(cfg.query, cfg.k, cfg.mode, bm25_weight=cfg.bm25_weight, fusion=cfg.fusion)
        if not hits:
            print(f"no chunk matches (mode={cfg.mode})")
        for i, h in enumerate(hits, 1):
            print(f"[{i}] {h.score:.4f} {h.source} ({h.title}) chars {h.start}-{h.end}\n    {h.text[:200]!r}")
    return 0


@verb(VERBS, "rag ask", RagAskConfig)
def run_ask(cfg: RagAskConfig) -> int:
    """answer a question from the index with [n] citations

    Example: llmlab rag ask index=wiki_idx query="When was the Eiffel Tower built?" rerank=10
    """
    from llmlab.infer.generate import stream_text
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    from llmlab.infer.sampling import SamplingParams
    from llmlab.rag.answer import add_citations, messages, rerank
    from llmlab.rag.index import RagIndex
    require(cfg.query, 'query is empty: pass query="..."')
    with RagIndex(cfg.index) as idx:
        note = _language_note(idx, cfg.query)
        hits = idx.search(cfg.query, max(cfg.k, cfg.rerank), cfg.mode, bm25_weight=cfg.bm25_weight, fusion=cfg.fusion)
        model, tok = load_model_and_tokenizer(cfg.model)
        if cfg.rerank:
            hits = rerank(model, tok, cfg.query, hits, cfg.k)
        hits = hits[:cfg.k]
        ids = tok.encode(tok.apply_chat_template(messages(cfg.query, hits, note), add_generation_prompt=True))
        answer = "".join(stream_text(model, tok, ids, SamplingParams(cfg.max_new_tokens, 0.0)))
        cited = add_citations(answer, hits, cfg.query)
        if note:
            print(f"note: {note}")
        print(cited.text)
        print("\nsources:" + (" (citations attributed by word overlap)" if cited.added else ""))
        for i, h in enumerate(hits, 1):
            mark = "*" if i in cited.cited else " "
            print(f"{mark}[{i}] {h.source} ({h.title}) chars {h.start}-{h.end}: {h.text[:120]!r}")
    return 0


@verb(VERBS, "rag delete", RagDeleteConfig)
def run_delete(cfg: RagDeleteConfig) -> int:
    """remove sources from an index

    Example: llmlab rag delete index=wiki_idx sources=docs/a.md
    """
    from llmlab.rag.index import RagIndex
    with RagIndex(cfg.index) as idx:
        missing = [s for s in cfg.sources if idx.find(s) is None]
        print(f"deleted {idx.delete(cfg.sources)} of {len(cfg.sources)} sources")
        left = idx.sources()[:2]
    if missing:  # a file is found by any path to it; other names must be the index's own
        print(f"not in the index: {', '.join(missing)} (files are named by their resolved absolute path, "
              f"other sources as given to `rag index`, e.g. {', '.join(left) or 'none: the index is empty'})",
              file=sys.stderr)
    return 0


@verb(VERBS, "rag eval", RagEvalConfig)
def run_eval(cfg: RagEvalConfig) -> int:
    """held-out retrieval recall@k/nDCG@10 and answer F1: closed-book, with retrieval, FLARE

    Example: llmlab rag eval docs=2000 n=200 n_qa=50
    """
    import json

    from llmlab.eval.data import wiki_extracts
    from llmlab.rag.evaluate import evaluate_index
    from llmlab.rag.index import RagIndex
    from llmlab.rag.loaders import Document
    ex = wiki_extracts()[:cfg.docs]
    sources = [f"wiki:{e['title']}" for e in ex]
    with RagIndex(cfg.index, create=True) as idx:
        with _progress(len(ex), "indexing") as bar:
            idx.add([Document(s, e["extract"], e["title"]) for s, e in zip(sources, ex)], progress=bar.update)
        model = tok = None
        if cfg.n_qa:
            from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
            model, tok = load_model_and_tokenizer(cfg.model)
        res = evaluate_index(idx, [e["extract"] for e in ex], sources, cfg.n, cfg.seed, model=model, tok=tok,
                             n_qa=cfg.n_qa, titles=[e["title"] for e in ex], flare_theta=cfg.flare_theta)
        print(json.dumps(res))
    return 0


def _serve_backend(path: str):
    from llmlab.rag.serving import open_backend
    return open_backend(path)


# `llmlab serve rag_index=PATH` retrieves through this (llmlab.serve cannot import a later stage)
RAG_BACKENDS["index"] = _serve_backend
