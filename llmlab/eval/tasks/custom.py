"""A user task in a JSONL file, one item per line.

Multiple choice (first line has "choices"): {"query": str, "choices": [str, ...], "gold": int}
  scored by log-likelihood of " " + choice after the query (acc, acc_norm, chance 1/#choices).
Generative: {"prompt": str, "answer": str} scored by greedy generation (stop at newline),
  SQuAD exact match and token F1; chance = most frequent answer's share.
A line without a required field raises UserError "file:line: missing field ...".
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from llmlab.errors import UserError
from llmlab.eval.choice import ChoiceMeter
from llmlab.data.packages import iter_jsonl
from llmlab.eval.squad import generated_em_f1

MC_FIELDS = ("query", "choices", "gold")
GEN_FIELDS = ("prompt", "answer")


def _check_gold(rec: dict) -> None:
    """A bad item -> ValueError, reported by iter_jsonl as 'file:line: why' (blank lines counted)."""
    c, g = rec["choices"], rec["gold"]
    if not isinstance(c, list) or not c:
        raise ValueError(f"'choices' must be a non-empty list (got {json.dumps(c)[:80]})")
    if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < len(c):
        raise ValueError(f"'gold' must index 'choices' (gold={json.dumps(g)}, {len(c)} choices)")


class JsonlTask:
    version = "file"

    def __init__(self, path: str):
        self.path = Path(path)
        self.name = self.path.name
        self._items = self._load()  # validate now: a bad file fails before any model is loaded

    def items(self, limit: int | None, seed: int) -> list[dict]:
        return self._items[:limit] if limit else list(self._items)

    def _load(self) -> list[dict]:
        first = next(iter_jsonl(self.path, ()), None)
        if first is None:
            raise UserError(f"{self.path}: no items")
        self.kind = "multiple_choice" if "choices" in first else "generate"
        fields = MC_FIELDS if self.kind == "multiple_choice" else GEN_FIELDS
        return list(iter_jsonl(self.path, fields, validate=_check_gold if self.kind == "multiple_choice" else None))

    def evaluate(self, ctx, items: list[dict]) -> dict:
        if self.kind == "multiple_choice":
            pairs = [(it["query"], " " + c) for it in items for c in it["choices"]]
            lls = iter(ctx.loglik(pairs))
            meter = ChoiceMeter()
            for it in items:
                meter.update([next(lls).logprob for _ in it["choices"]], it["choices"], it["gold"])
            return meter.result()
        em, f1, n = generated_em_f1(ctx, items, 32)
        top = Counter(it["answer"] for it in items).most_common(1)[0][1] if items else 0
        return {"exact_match": em, "f1": f1, "chance": top / max(n, 1), "n": n}

    def texts(self, items: list[dict]) -> list[str]:
        return [it.get("query") or it.get("prompt", "") for it in items]
