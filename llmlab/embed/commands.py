"""CLI verbs: `llmlab embed train|eval|nearest|analogy`."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from llmlab.verb import Verb, verb
from llmlab.embed.config import EmbedConfig
from llmlab.errors import require

VERBS: dict[str, Verb] = {}


@verb(VERBS, "embed train", EmbedConfig)
def run_train(cfg: EmbedConfig) -> int:
    """train word2vec / fastText / GloVe vectors on packaged text or files

    Example: llmlab embed train configs/embed_w2v.yaml sg=1 epochs=5 output_dir=runs/w2v
    """
    from llmlab.embed.recipe import run

    print(json.dumps({k: v for k, v in run(cfg).items() if k != "config"}, ensure_ascii=False))
    return 0


@dataclass
class EvalConfig:
    vectors: str = field(default="runs/embed/default", metadata={"help": "a train output_dir or a .vec/.txt/.bin file"})
    restrict_vocab: int = field(default=30000, metadata={"help": "analogies: only the most frequent words"})
    sections: bool = field(default=False, metadata={"help": "also print per-section analogy accuracy"})
    plot: str = field(default="", metadata={"help": "write a PCA plot of semantic clusters to this PNG"})


@verb(VERBS, "embed eval", EvalConfig)
def run_eval(cfg: EvalConfig) -> int:
    """analogies (3CosAdd/3CosMul), WordSim-353 and SimLex-999 Spearman

    Example: llmlab embed eval vectors=runs/w2v sections=true plot=runs/w2v/pca.png
    """
    from llmlab.embed.evaluate import evaluate_all
    from llmlab.embed.plot import pca_plot
    from llmlab.embed.recipe import load_vectors, summary

    kv = load_vectors(cfg.vectors)
    res = evaluate_all(kv, cfg.restrict_vocab)
    out = summary(res)
    if cfg.sections:
        out["sections"] = {s["section"]: round(s["correct"] / s["total"], 4) if s["total"] else None
                           for s in res["analogy_add"]["sections"]}
    if cfg.plot:
        out["plot"] = str(pca_plot(kv, cfg.plot))
    print(json.dumps(out))
    return 0


@dataclass
class NearestConfig:
    vectors: str = field(default="runs/embed/default", metadata={"help": "a train output_dir or a .vec/.txt/.bin file"})
    words: list[str] = field(default_factory=list, metadata={"help": "comma-separated probe words"})
    topn: int = field(default=10, metadata={"help": "neighbours per word"})


@verb(VERBS, "embed nearest", NearestConfig)
def run_nearest(cfg: NearestConfig) -> int:
    """nearest neighbours of words by cosine similarity

    Example: llmlab embed nearest vectors=runs/w2v words=king,paris topn=5
    """
    from llmlab.embed.recipe import load_vectors

    require(cfg.words, "config key 'words': give at least one word, e.g. words=king,paris")
    kv = load_vectors(cfg.vectors)
    for w in cfg.words:
        kv.vector(w)  # UserError naming the unknown word before any output
    for w in cfg.words:
        print(json.dumps({"word": w, "nearest": [[n, round(s, 4)] for n, s in kv.most_similar([w], topn=cfg.topn)]},
                         ensure_ascii=False))
    return 0


@dataclass
class AnalogyConfig:
    vectors: str = field(default="runs/embed/default", metadata={"help": "a train output_dir or a .vec/.txt/.bin file"})
    positive: list[str] = field(default_factory=list, metadata={"help": "words to add (b, c in b - a + c)"})
    negative: list[str] = field(default_factory=list, metadata={"help": "words to subtract (a)"})
    topn: int = field(default=5, metadata={"help": "answers to print"})


@verb(VERBS, "embed analogy", AnalogyConfig)
def run_analogy(cfg: AnalogyConfig) -> int:
    """b - a + c: words closest to the sum of the positives minus the negatives

    Example: llmlab embed analogy vectors=runs/w2v positive=king,woman negative=man
    """
    from llmlab.embed.recipe import load_vectors

    require(cfg.positive, "config key 'positive': give the words to add, e.g. positive=king,woman negative=man")
    kv = load_vectors(cfg.vectors)
    for w in cfg.positive + cfg.negative:
        kv.vector(w)
    res = kv.most_similar(cfg.positive, cfg.negative, topn=cfg.topn)
    print(json.dumps({"positive": cfg.positive, "negative": cfg.negative,
                      "answers": [[n, round(s, 4)] for n, s in res]}, ensure_ascii=False))
    return 0
