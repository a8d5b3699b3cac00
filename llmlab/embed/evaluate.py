"""Intrinsic evaluation, as gensim's KeyedVectors.evaluate_word_analogies / evaluate_word_pairs:

- analogies (Mikolov et al. 2013, questions-words.txt): "a b c d" asks for d from b - a + c,
  case-insensitively, among the `restrict` (30,000) most frequent words, questions with a word
  outside them skipped, the inputs excluded. 3CosAdd: argmax cos(x, b) - cos(x, a) + cos(x, c);
  3CosMul (Levy & Goldberg 2014): argmax cos'(x,b) cos'(x,c) / (cos'(x,a) + 0.001) with
  cos' = (1 + cos) / 2. Accuracy per section and overall.
- word similarity: Spearman's rho between human scores (WordSim-353, SimLex-999) and cosine
  similarity over the pairs whose words are known.
The benchmark files come from the gensim package's test data, read from disk.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from llmlab.embed.vectors import WordVectors
from llmlab.errors import UserError

SIMILARITY_SETS = {"ws353": "wordsim353.tsv", "simlex999": "simlex999.txt"}


def gensim_test_file(name: str) -> Path:
    from llmlab.data.sources import data_file

    return data_file("gensim", f"test/test_data/{name}")


def _ok_vocab(kv: WordVectors, restrict: int) -> dict[str, int]:
    words = kv.words[:restrict] if restrict else kv.words
    return {w.upper(): i for i, w in reversed(list(enumerate(words)))}  # the most frequent wins


def analogies(kv: WordVectors, path: str | Path | None = None, restrict: int = 30000, method: str = "add",
              batch: int = 256) -> dict:
    """{'accuracy', 'correct', 'total', 'skipped', 'sections': [{'section', 'correct', 'total'}]}."""
    if method not in ("add", "mul"):
        raise UserError(f"analogy method must be 'add' or 'mul', got {method!r}")
    p = Path(path) if path else gensim_test_file("questions-words.txt")
    ok = _ok_vocab(kv, restrict)
    sections: list[tuple[str, list]] = []
    skipped = 0
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith(":"):
            sections.append((line[1:].strip(), []))
            continue
        parts = line.upper().split()
        if not parts:
            continue
        if len(parts) != 4 or not sections:
            raise UserError(f"{p}: line {lineno}: expected 4 words after a ': section' line")
        if all(w in ok for w in parts):
            sections[-1][1].append([ok[w] for w in parts])
        else:
            skipped += 1
    unit = kv.unit()[:restrict] if restrict else kv.unit()
    out, correct, total = [], 0, 0
    for name, qs in sections:
        q = np.array(qs, dtype=np.int64).reshape(-1, 4)
        hits = 0
        for s in range(0, len(q), batch):
            a, b, c, d = q[s:s + batch].T
            score = analogy_scores(unit, a, b, c, method)
            cols = np.arange(len(a))
            for x in (a, b, c):
                score[x, cols] = -np.inf
            hits += int(np.sum(np.argmax(score, axis=0) == d))
        out.append({"section": name, "correct": hits, "total": len(q)})
        correct, total = correct + hits, total + len(q)
    return {"accuracy": correct / total if total else 0.0, "correct": correct, "total": total,
            "skipped": skipped, "sections": out}


def analogy_scores(unit: np.ndarray, a, b, c, method: str = "add", eps: float = 1e-3) -> np.ndarray:
    """[V, n] scores of every word as the answer to each question (a, b, c) (rows of unit vectors)."""
    sa, sb, sc = unit @ unit[a].T, unit @ unit[b].T, unit @ unit[c].T
    if method == "add":
        return sb - sa + sc
    return ((1 + sb) / 2) * ((1 + sc) / 2) / ((1 + sa) / 2 + eps)


def spearman(x, y) -> float:
    """Spearman's rho: Pearson correlation of the (tie-averaged) ranks."""
    def ranks(v):
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
        sums = np.bincount(inv, weights=r)
        return sums[inv] / counts[inv]
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / den) if den > 0 else 0.0


def word_pairs(kv: WordVectors, path: str | Path, restrict: int = 300000) -> dict:
    """{'spearman', 'pairs', 'oov_ratio'} over a tab-separated 'word1 word2 score' file."""
    p = Path(path)
    ok = _ok_vocab(kv, restrict)
    gold, model, total = [], [], 0
    unit = kv.unit()
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        try:
            a, b, score = parts[0].upper(), parts[1].upper(), float(parts[2])
        except (IndexError, ValueError):
            raise UserError(f"{p}: line {lineno}: expected 'word1<TAB>word2<TAB>score'") from None
        total += 1
        if a in ok and b in ok:
            gold.append(score)
            model.append(float(unit[ok[a]] @ unit[ok[b]]))
    return {"spearman": spearman(gold, model) if len(gold) > 1 else float("nan"), "pairs": len(gold),
            "oov_ratio": 1 - len(gold) / total if total else 1.0}


def evaluate_all(kv: WordVectors, restrict: int = 30000) -> dict:
    """Analogy accuracy (3CosAdd, 3CosMul) and the WS353 / SimLex-999 correlations."""
    res = {"analogy_add": analogies(kv, restrict=restrict, method="add"),
           "analogy_mul": analogies(kv, restrict=restrict, method="mul")}
    for key, fname in SIMILARITY_SETS.items():
        res[key] = word_pairs(kv, gensim_test_file(fname))
    return res
