"""Cloze QA cut from Wikipedia extracts: the answer is a span of the passage.

For a passage (the start of an extract), one sentence is repeated with a span blanked out: a
year/number or a capitalised multi-word name that is not the sentence's first word. The model
reads the passage and completes "The blank is:" after two worked examples (cut the same way
from other extracts, never scored); scored by SQuAD EM and token F1. Chance: a uniform
guess among the passage's spans of the same kind (1 / #distinct candidates, averaged).
"""
from __future__ import annotations

import random
import re

from llmlab.eval.data import wiki_extracts
from llmlab.eval.squad import generated_em_f1
from llmlab.eval.tasks.base import Task

_NUMBER = re.compile(r"\b\d{3,4}\b")
_NAME = re.compile(r"\b[A-Z][a-z]+(?: (?:of |de |the )?[A-Z][a-z]+)+\b")
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def make_item(extract: str, rng: random.Random) -> dict | None:
    sents = _SENT.split(extract)
    passage = " ".join(sents[:4])
    if len(passage) > 700:
        return None
    options = []
    for si, s in enumerate(sents[:4]):
        for pat in (_NUMBER, _NAME):
            for m in pat.finditer(s):
                if m.start() > 0:
                    options.append((si, m, pat))
    if not options:
        return None
    si, m, pat = rng.choice(options)
    s = sents[si]
    cands = {x.group(0) for x in pat.finditer(passage)}
    return {"passage": passage, "question": s[:m.start()] + "_____" + s[m.end():], "answer": m.group(0),
            "chance": 1.0 / len(cands)}


def seeded_items(texts: list[str], n: int, seed: int) -> list[tuple[dict, int]]:
    """Up to n items, each with the index of its text, from the texts in a seeded random order (one
    rng shuffles the order, then places the blanks): the prompt and RAG evaluations draw alike."""
    rng = random.Random(seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    out = []
    for i in order:
        it = make_item(texts[i], rng)
        if it is not None:
            out.append((it, i))
            if len(out) == n:
                break
    return out


def _block(it: dict) -> str:
    return f"Passage: {it['passage']}\nSentence: {it['question']}\nThe blank is:"


class WikiCloze(Task, kind="generate", name="wiki_cloze", default_limit=50):
    def items(self, limit: int | None, seed: int) -> list[dict]:
        extracts = [e["extract"] for e in wiki_extracts()]
        rng = random.Random(seed)
        order = list(range(len(extracts)))
        rng.shuffle(order)
        out, shots = [], []
        for i in order:
            it = make_item(extracts[i], rng)
            if it is None:
                continue
            if len(shots) < 2:  # the first two items become the worked examples
                shots.append(_block(it) + f" {it['answer']}\n\n")
                continue
            it["prompt"] = "".join(shots) + _block(it)
            out.append(it)
            if len(out) >= (limit or self.default_limit):
                break
        return out

    def evaluate(self, ctx, items: list[dict]) -> dict:
        em, f1, n = generated_em_f1(ctx, items, 16)
        return {"exact_match": em, "f1": f1, "chance": sum(it["chance"] for it in items) / max(n, 1), "n": n}

    def texts(self, items: list[dict]) -> list[str]:
        return [it["passage"] for it in items]
