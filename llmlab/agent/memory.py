"""Agent memory. Short-term: a window of the last k turns, or a running summary the LLM rewrites
when the transcript grows past a budget (MemGPT/LangChain ConversationSummaryMemory idea).
Long-term: a vector store of past texts recalled by cosine similarity of MiniLM embeddings."""
from __future__ import annotations

import numpy as np


class WindowMemory:
    def __init__(self, k: int = 4):
        self.k, self.turns = k, []

    def add(self, question: str, answer: str) -> None:
        self.turns = (self.turns + [(question, answer)])[-self.k:]

    def context(self, query: str = "") -> str:
        return "\n".join(f"Q: {q}\nA: {a}" for q, a in self.turns)


class SummaryMemory:
    def __init__(self, llm, max_chars: int = 600):
        self.llm, self.max_chars = llm, max_chars
        self.summary, self.recent = "", []

    def add(self, question: str, answer: str) -> None:
        self.recent.append(f"Q: {question}\nA: {answer}")
        if len(self.summary) + sum(map(len, self.recent)) > self.max_chars:
            msgs = [{"role": "user", "content": "Summarize the facts in this conversation in at most three "
                     f"sentences.\n\nEarlier summary: {self.summary or '(none)'}\n\n" + "\n".join(self.recent)}]
            self.summary = self.llm.chat(msgs, max_new_tokens=120).strip()[: self.max_chars]
            self.recent = []

    def context(self, query: str = "") -> str:
        return "\n".join(([f"Summary of earlier turns: {self.summary}"] if self.summary else []) + self.recent)


class VectorMemory:
    def __init__(self, encoder=None, k: int = 3):
        self._encoder, self.k = encoder, k
        self.texts: list[str] = []
        self.vecs: np.ndarray | None = None

    @property
    def encoder(self):
        if self._encoder is None:
            from llmlab.rag.embed import SentenceEncoder
            self._encoder = SentenceEncoder()
        return self._encoder

    def add(self, question: str, answer: str) -> None:
        text = f"Q: {question}\nA: {answer}"
        self.texts.append(text)
        v = self.encoder.encode([text]).numpy()
        self.vecs = v if self.vecs is None else np.concatenate([self.vecs, v])

    def recall(self, query: str) -> list[tuple[str, float]]:
        if self.vecs is None:
            return []
        s = self.vecs @ self.encoder.encode([query]).numpy()[0]
        top = np.argsort(-s, kind="stable")[: self.k]
        return [(self.texts[i], float(s[i])) for i in top]

    def context(self, query: str = "") -> str:
        return "\n".join(t for t, _ in self.recall(query))
