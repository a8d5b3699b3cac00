"""`llmlab embed train` end to end: corpus -> vocabulary -> training -> files -> evaluation ->
PCA plot; and loading a run back (vectors + fastText n-grams)."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from llmlab.embed import corpus, formats, vocab as vocab_mod
from llmlab.embed.config import EmbedConfig
from llmlab.embed.vectors import WordVectors
from llmlab.errors import UserError
from llmlab.log import get_logger


def settings(cfg: EmbedConfig):
    from llmlab.embed.word2vec import TrainSettings

    keys = TrainSettings.__dataclass_fields__
    return TrainSettings(**{k: v for k, v in asdict(cfg).items() if k in keys},
                         fasttext=cfg.model == "fasttext" and cfg.max_n > 0)


def train_vectors(cfg: EmbedConfig, vocab=None, encoded=None) -> WordVectors:
    if vocab is None:
        sents = corpus.iter_sentences(cfg.sources, cfg.files, cfg.lower, cfg.max_tokens, cfg.segment)
        vocab, encoded = vocab_mod.build(sents, cfg.min_count, cfg.max_vocab_size)
    get_logger().info(f"embed: {encoded.raw_tokens:,} tokens, vocabulary {len(vocab):,} "
                      f"(min_count={cfg.min_count}), {len(encoded.ids):,} tokens kept")
    if cfg.model == "glove":
        from llmlab.embed import glove

        cooc = glove.cooccurrence(encoded.ids, encoded.sent_starts, len(vocab), cfg.window)
        vecs, _ = glove.train(cooc, cfg.vector_size, cfg.epochs, cfg.alpha, cfg.x_max, cfg.power,
                              cfg.seed, cfg.workers, cfg.progress)
        return WordVectors(vocab.words, vecs, counts=vocab.counts)
    from llmlab.embed.word2vec import train

    return train(vocab, encoded, settings(cfg), progress=cfg.progress)


RUN_FILES = ("vectors.vec", "vectors.bin", "ngrams.npy", "subwords.json", "pca.png", "report.json")


def save_run(kv: WordVectors, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    formats.save(kv, out / "vectors.vec")
    formats.save(kv, out / "vectors.bin")
    if kv.ngrams is not None:
        np.save(out / "ngrams.npy", kv.ngrams)
        (out / "subwords.json").write_text(json.dumps({"min_n": kv.min_n, "max_n": kv.max_n, "bucket": kv.bucket}))
    else:  # an earlier fastText run's n-grams would be loaded with these vectors
        for name in ("ngrams.npy", "subwords.json"):
            (out / name).unlink(missing_ok=True)


def load_vectors(path: str) -> WordVectors:
    """A run directory (vectors.bin, + n-grams if fastText) or a .vec/.txt/.bin file."""
    p = Path(path)
    if p.is_dir():
        if not (p / "vectors.bin").is_file():
            raise UserError(f"{p} has no vectors.bin (not an 'llmlab embed train' output_dir)")
        kv = formats.load(p / "vectors.bin")
        if (p / "ngrams.npy").is_file() and (p / "subwords.json").is_file():
            meta = json.loads((p / "subwords.json").read_text())
            kv.ngrams = np.load(p / "ngrams.npy", allow_pickle=False)
            kv.min_n, kv.max_n, kv.bucket = int(meta["min_n"]), int(meta["max_n"]), int(meta["bucket"])
        return kv
    return formats.load(p)


def run(cfg: EmbedConfig) -> dict:
    """Train, then write the run's files into a temporary folder beside `output_dir` that replaces
    it only when all are written (`atomic_dir`): a failure or kill keeps the previous run whole."""
    from llmlab.checkpoint import atomic_dir, check_output_dir

    check_output_dir(cfg.output_dir, "output_dir", RUN_FILES)  # before the training, not after it
    t0 = time.perf_counter()
    kv = train_vectors(cfg)
    secs = time.perf_counter() - t0
    out = Path(cfg.output_dir)
    report = {"model": cfg.model, "words": len(kv), "vector_size": kv.vector_size, "seconds": round(secs, 2),
              "output_dir": str(out), "config": asdict(cfg)}
    english = not cfg.files and not any(s in corpus.ZH_SOURCES for s in cfg.sources)
    with atomic_dir(out) as tmp:
        save_run(kv, tmp)
        if cfg.evaluate and english:
            from llmlab.embed.evaluate import evaluate_all
            from llmlab.embed.plot import pca_plot

            res = evaluate_all(kv, cfg.restrict_vocab)
            report["eval"] = summary(res)
            plot = pca_plot(kv, tmp / "pca.png", title=f"{cfg.model} (sg={cfg.sg}), PCA of 5 clusters")
            report["plot"] = str(out / plot.name) if plot else None
        (tmp / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    return report


def summary(res: dict) -> dict:
    return {"analogy_add": round(res["analogy_add"]["accuracy"], 4),
            "analogy_mul": round(res["analogy_mul"]["accuracy"], 4),
            "analogy_questions": res["analogy_add"]["total"],
            "ws353": round(res["ws353"]["spearman"], 4), "simlex999": round(res["simlex999"]["spearman"], 4)}
