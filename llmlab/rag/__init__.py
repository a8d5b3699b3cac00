"""Retrieval-augmented generation: load documents, chunk them, index them (SQLite + FTS5 + FAISS),
retrieve (dense, BM25, hybrid by reciprocal rank fusion, LLM reranking) and answer with citations."""
