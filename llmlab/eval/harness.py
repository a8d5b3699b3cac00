"""The evaluation context every task runs against: one model, one tokenizer, fixed settings.

Tasks ask it for log-likelihoods of (context, continuation) strings, rolling NLL of documents
and greedy generations; it counts truncated prompts so a task can report them instead of
silently scoring a cut prompt.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from llmlab.eval.generation import Generation, greedy_generate, greedy_generate_many
from llmlab.eval.scoring import LogLik, encode_pair, loglikelihoods, rolling_nll


@dataclass
class EvalContext:
    model: object
    tokenizer: object
    batch_size: int = 16
    bucket: int = 32
    max_length: int | None = None  # None: the model's context window
    seed: int = 1234
    truncated: int = 0
    timings: dict = field(default_factory=dict)

    @property
    def window(self) -> int:
        n = self.model.config.max_position_embeddings
        return min(self.max_length, n) if self.max_length else n

    @property
    def prefix_id(self) -> int:
        """Token that conditions the first token of a document (lm-eval uses EOT the same way)."""
        for i in (self.tokenizer.bos_id, self.tokenizer.eos_id):
            if i is not None:
                return i
        return 0

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, allow_special=False)

    def loglik(self, pairs: Sequence[tuple[str, str]]) -> list[LogLik]:
        reqs = [encode_pair(self.tokenizer, c, x, self.prefix_id) for c, x in pairs]
        out = loglikelihoods(self.model, reqs, self.batch_size, self.bucket, self.window)
        self.truncated += sum(r.truncated for r in out)
        return out

    def rolling(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        return rolling_nll(self.model, [self.encode(t) for t in texts], self.prefix_id, self.window,
                           self.batch_size, self.bucket)

    def _prompt_ids(self, prompt: str, chat: bool) -> list[int]:
        if chat and self.tokenizer.chat_template:
            prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                        add_generation_prompt=True)
            return self.tokenizer.encode(prompt, allow_special=True)
        return self.encode(prompt)

    def generate(self, prompt: str, max_new_tokens: int = 64, stop: Sequence[str] = (),
                 chat: bool = False) -> Generation:
        g = greedy_generate(self.model, self.tokenizer, self._prompt_ids(prompt, chat), max_new_tokens, stop,
                            self.window)
        self.truncated += g.truncated
        return g

    def generate_many(self, prompts: Sequence[str], max_new_tokens: int = 64, stop: Sequence[str] = (),
                      chat: bool = False) -> list[Generation]:
        """`generate` for every prompt, together through the batched engine (same outputs)."""
        gens = greedy_generate_many(self.model, self.tokenizer, [self._prompt_ids(p, chat) for p in prompts],
                                    max_new_tokens, stop, self.window, max_num_seqs=self.batch_size)
        self.truncated += sum(g.truncated for g in gens)
        return gens


def run_task(task, ctx: EvalContext, limit: int | None = None, index=None) -> dict:
    """-> {task, version, metrics..., chance..., n, truncated, seconds[, contamination]}.
    `index`: an llmlab.eval.contamination.NgramIndex of the training corpus, or None."""
    items = task.items(limit, ctx.seed)
    before = ctx.truncated
    t0 = time.perf_counter()
    res = task.evaluate(ctx, items)
    res = {"task": task.name, "version": task.version, **res,
           "truncated": ctx.truncated - before, "seconds": round(time.perf_counter() - t0, 2)}
    if index is not None:
        from llmlab.eval.contamination import contamination
        res["contamination"] = contamination(index, task.texts(items))
    return res
