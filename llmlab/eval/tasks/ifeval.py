"""IFEval-style verifiable instructions (Zhou et al. 2023), generated from Wikipedia topics.

Each prompt asks for a short text about a topic under one or two instructions whose compliance
a program can check: word-count bounds, a JSON object with given keys, required keywords,
all lowercase / all capitals, no commas, a fixed closing phrase. Metrics as in IFEval:
prompt-level strict accuracy (every instruction followed) and instruction-level accuracy.
Baseline ("chance"): the same checks applied to a constant response (the topic name).
"""
from __future__ import annotations

import json
import random
import re

from llmlab.eval.data import wiki_extracts
from llmlab.eval.tasks.base import Task

_END = "Is there anything else I can help with?"


def _json_obj(text: str):
    text = text.strip()
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text)  # IFEval also strips markdown fences
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def make_instruction(rng: random.Random, topic: str) -> tuple[str, dict]:
    kind = rng.choice(["max_words", "min_words", "json", "keywords", "lower", "upper", "no_comma", "end"])
    if kind == "max_words":
        n = rng.choice([20, 30, 50])
        return f"Answer in at most {n} words.", {"kind": kind, "n": n}
    if kind == "min_words":
        n = rng.choice([20, 30, 40])
        return f"Answer in at least {n} words.", {"kind": kind, "n": n}
    if kind == "json":
        return ('Wrap your entire answer as a JSON object with the keys "topic" and "summary".',
                {"kind": kind, "keys": ["topic", "summary"]})
    if kind == "keywords":
        kws = rng.sample(["history", "people", "important", "world", "known", "example"], 2)
        return f"Include the keywords '{kws[0]}' and '{kws[1]}' in your answer.", {"kind": kind, "words": kws}
    if kind == "lower":
        return "Your entire answer must be in lowercase letters; no capital letters are allowed.", {"kind": kind}
    if kind == "upper":
        return "Your entire answer must be in English capital letters only.", {"kind": kind}
    if kind == "no_comma":
        return "Do not use any commas in your answer.", {"kind": kind}
    return f"Finish your answer with the exact phrase '{_END}'. No other words should follow it.", {"kind": kind}


def check(response: str, spec: dict) -> bool:
    words = re.findall(r"\b\w+\b", response)
    k = spec["kind"]
    if k == "max_words":
        return 0 < len(words) <= spec["n"]
    if k == "min_words":
        return len(words) >= spec["n"]
    if k == "json":
        obj = _json_obj(response)
        return isinstance(obj, dict) and all(key in obj for key in spec["keys"])
    if k == "keywords":
        return all(re.search(rf"\b{re.escape(w)}\b", response, re.I) for w in spec["words"])
    if k == "lower":
        return any(c.isalpha() for c in response) and response == response.lower()
    if k == "upper":
        return any(c.isalpha() for c in response) and response == response.upper()
    if k == "no_comma":
        return bool(response.strip()) and "," not in response
    if k == "end":
        return response.strip().endswith(_END)
    raise ValueError(f"unknown instruction kind {k!r}")


class IFEvalLite(Task, kind="generate", name="ifeval_lite", default_limit=30):
    def items(self, limit: int | None, seed: int) -> list[dict]:
        rng = random.Random(seed)
        topics = [e["title"] for e in wiki_extracts()]
        out = []
        for _ in range(limit or self.default_limit):
            topic = rng.choice(topics)
            specs, texts = [], []
            for _ in range(rng.choice([1, 2])):
                text, spec = make_instruction(rng, topic)
                if spec["kind"] not in {s["kind"] for s in specs} and not (
                        {spec["kind"], *(s["kind"] for s in specs)} >= {"lower", "upper"}):
                    specs.append(spec)
                    texts.append(text)
            out.append({"topic": topic, "prompt": f"Write a short description of {topic}. " + " ".join(texts),
                        "specs": specs})
        return out

    def evaluate(self, ctx, items: list[dict]) -> dict:
        prompt_ok = inst_ok = inst_n = 0
        base_prompt = base_inst = 0
        gens = ctx.generate_many([it["prompt"] for it in items], max_new_tokens=128, chat=True)
        for it, g in zip(items, gens):
            resp = g.text
            oks = [check(resp, s) for s in it["specs"]]
            prompt_ok += all(oks)
            inst_ok += sum(oks)
            inst_n += len(oks)
            base = [check(it["topic"], s) for s in it["specs"]]
            base_prompt += all(base)
            base_inst += sum(base)
        n = max(len(items), 1)
        return {"prompt_acc": prompt_ok / n, "instruction_acc": inst_ok / max(inst_n, 1),
                "chance": {"prompt_acc": base_prompt / n, "instruction_acc": base_inst / max(inst_n, 1)},
                "n": len(items)}

    def texts(self, items: list[dict]) -> list[str]:
        return [it["prompt"] for it in items]
