"""Retrieval-augmented chat in the server: `llmlab serve rag_index=PATH` opens an index made by
`llmlab rag index`; a chat request that opts in (`"rag": true` or `{"k": 5, "mode": "bm25"}`)
is answered from the top-k chunks for its last user message, with the prompt `llmlab rag ask`
builds (llmlab.rag.answer.messages), and the numbered sources come back on the message.

The serve stage comes before rag in the pipeline, so it does not import it: llmlab.rag.commands
fills RAG_BACKENDS (as llmlab.distributed fills llmlab.train's TRAIN_LOOPS). A backend is used
from one dedicated thread: its SQLite connection and sentence encoder stay there, and retrieval
never blocks the event loop that streams tokens.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from llmlab.errors import UserError

# "index" -> open(path) -> backend with info(), augment(conv, k, mode), sources(text, hits, question)
RAG_BACKENDS: dict = {}
MAX_K = 20


@dataclass
class Augmented:
    conv: list[dict]  # the conversation with the numbered sources in its last user turn
    hits: list  # the retrieved chunks, in source order [1], [2], ...
    question: str


class Retrieval:
    """The server's RAG index. `default_on`: requests that do not say "rag" use it too."""

    def __init__(self, path: str, k: int = 3, default_on: bool = False):
        if "index" not in RAG_BACKENDS:
            raise UserError("rag_index: the rag stage is not loaded (start the server with the llmlab CLI)")
        if not 1 <= k <= MAX_K:
            raise UserError(f"rag_k must be in [1, {MAX_K}], got {k}")
        self.path, self.k, self.default_on = str(path), k, default_on
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="llmlab-rag")
        try:
            self._backend = self._pool.submit(RAG_BACKENDS["index"], self.path).result()
        except BaseException:
            self._pool.shutdown(wait=False)
            raise

    def _run(self, fn, *args):
        return asyncio.wrap_future(self._pool.submit(fn, *args))

    def info_sync(self) -> dict:
        return self._pool.submit(self._backend.info).result()

    async def info(self) -> dict:
        return {**(await self._run(self._backend.info)), "k": self.k, "default": self.default_on}

    def options(self, rag) -> tuple[int, str] | None:
        """The request's `rag` field (None, bool or {"k", "mode"}) -> (k, mode), or None when off."""
        if rag is None:
            rag = self.default_on
        if rag is False:
            return None
        k = getattr(rag, "k", None) or self.k
        return k, getattr(rag, "mode", None) or "hybrid"

    async def augment(self, conv: list[dict], k: int, mode: str) -> Augmented:
        from llmlab.serve.protocol import APIError
        try:
            return Augmented(*(await self._run(self._backend.augment, conv, k, mode)))
        except UserError as e:
            code = "rag_index_empty" if "empty" in str(e) and "index" in str(e) else None
            raise APIError(400, f"rag: {e}", "rag", code) from None

    def sources(self, text: str, aug: Augmented) -> list[dict]:
        """[{"n", "title", "source", "start", "end", "score", "text", "cited"}] for one answer."""
        return self._backend.sources(text or "", aug.hits, aug.question)

    def close(self) -> None:
        self._pool.submit(self._backend.close)
        self._pool.shutdown(wait=True)


def no_index_error():
    from llmlab.serve.protocol import APIError
    return APIError(400, "'rag': this server has no RAG index (start it with llmlab serve rag_index=PATH, "
                         "an index made by llmlab rag index)", "rag", "rag_not_enabled")
