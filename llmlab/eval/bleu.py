"""Corpus BLEU (Papineni et al. 2002) exactly as sacrebleu computes it by default.

BLEU = BP * exp(mean_n log p_n), n = 1..4, where p_n are clipped n-gram precisions summed over
the whole corpus (not averaged per sentence) and BP = exp(1 - r/c) if c < r else 1, with c the
total hypothesis length and r the sum over sentences of the reference length closest to each
hypothesis (ties -> the shorter). Tokenisation is mteval-v13a; smoothing is sacrebleu's default
'exp' (NIST: the k-th zero precision becomes 1 / (2^k * total)). Scores are on a 0-100 scale.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

_13A = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),  # punctuation and symbols
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # period/comma unless preceded by a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # period/comma unless followed by a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # dash after a digit
]


def tokenize_13a(line: str) -> list[str]:
    """mteval-v13a tokenisation (the WMT standard)."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, repl in _13A:
        line = pattern.sub(repl, line)
    return line.split()


def _ngrams(tokens: list[str], max_n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1))


def _closest(hyp_len: int, ref_lens: list[int]) -> int:
    return min(ref_lens, key=lambda r: (abs(hyp_len - r), r))


class CorpusBLEU:
    """Streaming corpus BLEU: `update` one segment at a time, `score()` at the end."""

    def __init__(self, max_n: int = 4):
        self.max_n = max_n
        self.correct = [0] * max_n
        self.total = [0] * max_n
        self.sys_len = 0
        self.ref_len = 0

    def update(self, hypothesis: str, references: Sequence[str]) -> None:
        hyp = tokenize_13a(hypothesis)
        ref_max: Counter = Counter()
        ref_lens = []
        for ref in references:
            toks = tokenize_13a(ref)
            ref_lens.append(len(toks))
            for g, c in _ngrams(toks, self.max_n).items():  # clip by the max count over references
                ref_max[g] = max(ref_max[g], c)
        self.sys_len += len(hyp)
        self.ref_len += _closest(len(hyp), ref_lens)
        for g, c in _ngrams(hyp, self.max_n).items():
            self.total[len(g) - 1] += c
            self.correct[len(g) - 1] += min(c, ref_max.get(g, 0))

    def brevity_penalty(self) -> float:
        if self.sys_len >= self.ref_len:
            return 1.0
        return math.exp(1 - self.ref_len / self.sys_len) if self.sys_len > 0 else 0.0

    def precisions(self) -> list[float]:
        out, smooth = [0.0] * self.max_n, 1.0
        for n in range(self.max_n):
            if self.total[n] == 0:
                break  # no n-grams of this order at all: the score is 0
            if self.correct[n] == 0:
                smooth *= 2  # 'exp' smoothing
                out[n] = 100.0 / (smooth * self.total[n])
            else:
                out[n] = 100.0 * self.correct[n] / self.total[n]
        return out

    def score(self) -> float:
        if not any(self.correct):
            return 0.0
        p = self.precisions()
        if min(p) <= 0:
            return 0.0
        return self.brevity_penalty() * math.exp(sum(math.log(x) for x in p) / self.max_n)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """hypotheses[i] is scored against references[j][i] for every reference stream j (sacrebleu's layout)."""
    for stream in references:
        if len(stream) != len(hypotheses):
            raise ValueError(f"a reference stream has {len(stream)} segments, hypotheses have {len(hypotheses)}")
    m = CorpusBLEU()
    for i, hyp in enumerate(hypotheses):
        m.update(hyp, [stream[i] for stream in references])
    return m.score()
