"""The one text-in/text-out interface the prompting, RAG and agent stages use: a model and its
tokenizer behind `complete(prompt)` and `chat(messages)`, on the project's single-sequence
decoder (llmlab.infer.generate), counting the tokens it spends."""
from __future__ import annotations

from llmlab.infer.sampling import SamplingParams


class LocalLLM:
    def __init__(self, model, tokenizer):
        self.model, self.tok = model, tokenizer
        self.prompt_tokens = self.completion_tokens = 0

    @classmethod
    def load(cls, ref: str = "smollm2", device: str = "auto") -> "LocalLLM":
        from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
        return cls(*load_model_and_tokenizer(ref, device))

    def _run(self, ids: list[int], max_new_tokens: int, temperature: float, seed: int | None, stop,
             constraint: str | None = None) -> str:
        from llmlab.infer.generate import stream_text
        ctx = self.model.config.max_position_embeddings
        ids = ids[-(ctx - max_new_tokens - 1):]  # keep the end of an over-long prompt
        params = SamplingParams(max_new_tokens, temperature, seed=seed, stop=tuple(stop or ()))
        proc = None
        if constraint is not None:  # the engine's token mask (llmlab.infer.constrained): output matches the regex
            from llmlab.infer.constrained import ConstrainedLogits
            proc = ConstrainedLogits(self._constraint(constraint), max_new_tokens)
        text = "".join(stream_text(self.model, self.tok, ids, params, proc))
        self.prompt_tokens += len(ids)
        self.completion_tokens += len(self.tok.encode(text, allow_special=False)) if text else 0
        return text

    def _constraint(self, pattern: str):
        from llmlab.infer.constrained import Constraint
        cache = self.__dict__.setdefault("_constraints", {})
        if pattern not in cache:
            cache[pattern] = Constraint(pattern, self.tok)
        return cache[pattern]

    def complete(self, prompt: str, max_new_tokens: int = 128, temperature: float = 0.0, seed: int | None = 0,
                 stop=(), constraint: str | None = None) -> str:
        return self._run(self.tok.encode(prompt, allow_special=False), max_new_tokens, temperature, seed, stop,
                         constraint)

    def chat(self, messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.0, seed: int | None = 0,
             stop=(), prefix: str = "", constraint: str | None = None) -> str:
        """Reply to the conversation; `prefix` starts the assistant's turn (returned text excludes it);
        `constraint`: a regular expression the reply must match (constrained decoding)."""
        text = self.tok.apply_chat_template(messages, add_generation_prompt=True) + prefix
        return self._run(self.tok.encode(text), max_new_tokens, temperature, seed, stop, constraint)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
