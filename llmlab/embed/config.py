"""The stage's typed config, with gensim's field names and defaults (Word2Vec / FastText)."""
from __future__ import annotations

from dataclasses import dataclass, field


def _h(text: str, default):
    return field(default=default, metadata={"help": text})


def _hl(text: str, factory):
    return field(default_factory=factory, metadata={"help": text})


@dataclass
class EmbedConfig:
    model: str = _h("word2vec, fasttext or glove", "word2vec")
    sources: list[str] = _hl("packaged sources (wiki_en, poetry_en, news_zh, reviews_zh, idioms_zh)", lambda: ["wiki_en"])
    files: list[str] = _hl("UTF-8 text files, one sentence per line (instead of sources)", list)
    segment: str = _h("auto (sources: jieba for Chinese ones; files: whitespace, or jieba when mostly Chinese "
                      "without spaces between words), regex, jieba, whitespace", "auto")
    lower: bool = _h("lower-case the text", True)
    max_tokens: int = _h("stop reading after this many tokens (0 = all)", 0)
    vector_size: int = _h("dimension of the vectors", 100)
    window: int = _h("maximum distance between the centre and a context word", 5)
    min_count: int = _h("drop words rarer than this", 5)
    max_vocab_size: int = _h("keep at most this many most frequent words (0 = no cap)", 0)
    sg: int = _h("1 = skip-gram, 0 = CBOW", 0)
    hs: int = _h("1 = hierarchical softmax", 0)
    negative: int = _h("negative samples per positive (0 = none)", 5)
    ns_exponent: float = _h("negative-sampling distribution: count^ns_exponent", 0.75)
    cbow_mean: int = _h("CBOW: 1 = mean of the context vectors, 0 = sum", 1)
    sample: float = _h("subsampling threshold t (word2vec.c formula; 0 = off)", 1e-3)
    epochs: int = _h("passes over the corpus (GloVe: 25 is usual)", 5)
    workers: int = _h("training threads (Hogwild)", 1)
    alpha: float = _h("initial learning rate (GloVe: AdaGrad's, 0.05 is usual)", 0.025)
    min_alpha: float = _h("final learning rate (linear decay)", 0.0001)
    seed: int = _h("random seed (one thread: bit-reproducible)", 1)
    min_n: int = _h("fastText: shortest character n-gram", 3)
    max_n: int = _h("fastText: longest character n-gram (0 = no n-grams)", 6)
    bucket: int = _h("fastText: hash buckets for n-grams", 2_000_000)
    x_max: float = _h("GloVe: weighting cutoff in f(x) = min(1, (x/x_max)^power)", 100.0)
    power: float = _h("GloVe: weighting exponent", 0.75)
    output_dir: str = _h("the run's folder (vectors.vec, vectors.bin, report.json, + ngrams.npy for fastText), "
                         "replaced whole when the run has written it", "runs/embed/default")
    evaluate: bool = _h("run the analogy / similarity benchmarks after training", True)
    restrict_vocab: int = _h("analogies: only the most frequent words", 30000)
    progress: bool = _h("progress bar on stderr", True)

    def __post_init__(self):
        if self.model not in ("word2vec", "fasttext", "glove"):
            raise ValueError(f"model must be word2vec, fasttext or glove, got {self.model!r}")
        for key in ("vector_size", "window", "epochs", "workers", "min_count"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.model != "glove" and not self.hs and self.negative <= 0:
            raise ValueError("set hs=1 or negative > 0 (there is no output layer otherwise)")
        if self.negative > 64:
            raise ValueError(f"negative must be <= 64 (the papers use 5-20), got {self.negative}")
        if self.model == "fasttext" and self.max_n and (self.min_n < 1 or self.max_n < self.min_n or self.bucket < 1):
            raise ValueError("fastText needs 1 <= min_n <= max_n and bucket >= 1 (or max_n=0)")
