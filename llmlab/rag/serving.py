"""The server's retrieval backend (registered in llmlab.serve.retrieval.RAG_BACKENDS by
llmlab.rag.commands): the same retrieval, language note and prompt as `llmlab rag ask`, applied
to a chat conversation, and the answer's sources with the citations it makes."""
from __future__ import annotations

from llmlab.errors import UserError
from llmlab.rag.answer import add_citations, language_note, messages
from llmlab.rag.index import RagIndex


def _text(content) -> str:
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


class ServeBackend:
    def __init__(self, path: str, encoder=None):
        self.idx = RagIndex(path, encoder=encoder)

    def warm(self) -> None:
        self.idx.encoder.encode(["warm up"])

    def info(self) -> dict:
        s = self.idx.store
        return {"index": str(s.root), "sources": s.count("sources"), "chunks": s.count("chunks")}

    def augment(self, conv: list[dict], k: int, mode: str):
        """-> (conversation, hits, question): the last user turn becomes `rag ask`'s prompt (numbered
        sources + question); `rag ask`'s system prompt goes first, before the client's own."""
        last = max((i for i, m in enumerate(conv) if m["role"] == "user"), default=None)
        if last is None or not _text(conv[last]["content"]).strip():
            raise UserError("retrieval needs a non-empty user message to search for")
        question = _text(conv[last]["content"]).strip()
        hits = self.idx.search(question, k, mode)
        system, user = messages(question, hits, language_note(self.idx, question))
        rest = conv[:last]
        if rest and rest[0]["role"] == "system":
            system = {"role": "system", "content": system["content"] + "\n\n" + _text(rest[0]["content"])}
            rest = rest[1:]
        return [system, *rest, user, *conv[last + 1:]], hits, question

    def sources(self, text: str, hits, question: str) -> list[dict]:
        cited = set(add_citations(text, hits, question).cited)
        return [{"n": i, "title": h.title, "source": h.source, "start": h.start, "end": h.end,
                 "score": round(float(h.score), 6), "text": h.text, "cited": i in cited}
                for i, h in enumerate(hits, 1)]

    def close(self) -> None:
        self.idx.close()


def open_backend(path: str) -> ServeBackend:
    b = ServeBackend(path)
    if b.info()["chunks"]:
        b.warm()  # load the sentence encoder now, not on the first request
    return b
