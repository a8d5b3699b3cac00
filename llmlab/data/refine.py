"""`llmlab data refine`: a built corpus -> sentence-level dedup -> quality classifier ->
perplexity filter -> train.jsonl + report (counts per step and per source).

The two model-based filters learn from a reference source (default wiki_en, as CCNet and GPT-3
use Wikipedia): the classifier separates reference documents (positives) from a random sample of
the corpus' own other-source documents (negatives); the n-gram LM is trained on reference
documents, and the perplexity cut is the `perplexity_quantile` of held-out reference documents'
perplexities. They apply to documents of `languages` (one LM and one classifier per language
would be needed for the others); other documents pass through and are counted as such.
"""
from __future__ import annotations

import itertools
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmlab.data.model_filter import NgramLM, QualityClassifier
from llmlab.data.packages import iter_jsonl
from llmlab.checkpoint import atomic_write_text
from llmlab.data.report import Report
from llmlab.data.sentence_dedup import SentenceDeduper
from llmlab.data.sources import SOURCES
from llmlab.errors import UserError


@dataclass
class RefineConfig:
    data: str = field(default="runs/data/train.jsonl", metadata={"help": "`llmlab data build` output (JSONL, text)"})
    out_dir: str = field(default="runs/data_refined", metadata={"help": "writes train.jsonl, report.json, report.md"})
    reference: str = field(default="wiki_en", metadata={"help": "reference source (positives, LM text)"})
    reference_docs: int = field(default=2000, metadata={"help": "reference documents used (10% held out)"})
    languages: list[str] = field(default_factory=lambda: ["en"], metadata={"help": "languages the model filters judge"})
    sentence_dedup: bool = field(default=True, metadata={"help": "drop self-repeating and already-seen sentences"})
    classifier_threshold: float = field(default=0.0, metadata={
        "help": "keep if P(reference-like) >= this (0.5 is usual); 0 = off: on our corpus it rejects all poetry"})
    perplexity_quantile: float = field(default=0.95, metadata={
        "help": "keep if perplexity <= this quantile of held-out reference perplexities; 0 = off"})
    ngram: int = field(default=3, metadata={"help": "order of the reference n-gram LM"})
    seed: int = 0

    def __post_init__(self):
        if self.reference not in SOURCES:
            raise UserError(f"reference: unknown source '{self.reference}'; known: {', '.join(SOURCES)}")
        if not 0 <= self.classifier_threshold <= 1 or not 0 <= self.perplexity_quantile <= 1:
            raise UserError("classifier_threshold and perplexity_quantile must be in [0, 1]")
        if self.reference_docs < 10 or self.ngram < 1:
            raise UserError("reference_docs must be >= 10 and ngram >= 1")


def _records(path: Path) -> list[dict]:
    def check(rec):
        if not isinstance(rec.get("text"), str):
            raise ValueError('expected an object with a string "text" field')
    return list(iter_jsonl(path, validate=check))


def refine(cfg: RefineConfig) -> dict:
    src = Path(cfg.data)
    if not src.is_file():
        raise UserError(f"data file not found: {src} (make one with `llmlab data build`)")
    recs = _records(src)
    if not recs:
        raise UserError(f"{src}: no documents")
    ref = list(itertools.islice(SOURCES[cfg.reference](), cfg.reference_docs))
    n_held = max(1, len(ref) // 10)
    ref_train, ref_held = ref[n_held:], ref[:n_held]
    judged = [r for r in recs if r.get("lang", "en") in cfg.languages]
    report, extra = Report(), {}
    clf = lm = None
    if cfg.classifier_threshold > 0:
        others = [r["text"] for r in judged if r.get("source") != cfg.reference]
        negatives = random.Random(cfg.seed).sample(others, min(len(others), len(ref_train)))
        if not negatives:
            raise UserError("classifier: no non-reference documents in the judged languages to learn from; "
                            "set classifier_threshold=0")
        clf = QualityClassifier().fit(ref_train, negatives)
        extra["classifier"] = {"positives": len(ref_train), "negatives": len(negatives),
                               "held_out_reference_kept": float(np.mean(clf.score(ref_held) >= cfg.classifier_threshold))}
    if cfg.perplexity_quantile > 0:
        lm = NgramLM(cfg.ngram).fit(ref_train)
        held = [lm.perplexity(t) for t in ref_held]
        cut = float(np.quantile(held, cfg.perplexity_quantile))
        extra["perplexity"] = {"ngram": cfg.ngram, "cut": round(cut, 2), "held_out_median": round(float(np.median(held)), 2)}
    dedup = SentenceDeduper()
    out = Path(cfg.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"out_dir '{out}': cannot create ({e.strerror or e})") from None
    kept_lines = []
    for rec in recs:
        text, source = rec["text"], rec.get("source", "?")
        counts = report.per_source[source]
        counts["in"] += 1
        if cfg.sentence_dedup:
            t = time.process_time()
            new = dedup(text)
            report.record("sentence_dedup", text, bool(new), "all_sentences_dropped", new, time.process_time() - t)
            if not new:
                counts["drop_sentence_dedup"] += 1
                continue
            text = new
        if rec.get("lang", "en") in cfg.languages:
            if clf is not None:
                t = time.process_time()
                ok = float(clf.score([text])[0]) >= cfg.classifier_threshold
                report.record("quality_classifier", text, ok, "not_reference_like", seconds=time.process_time() - t)
                if not ok:
                    counts["drop_quality_classifier"] += 1
                    continue
            if lm is not None:
                t = time.process_time()
                ok = lm.perplexity(text) <= cut
                report.record("perplexity", text, ok, "perplexity_above_cut", seconds=time.process_time() - t)
                if not ok:
                    counts["drop_perplexity"] += 1
                    continue
        else:
            counts["not_judged"] += 1
        counts["kept"] += 1
        kept_lines.append(json.dumps({**rec, "text": text}, ensure_ascii=False))
    extra["sentences_dropped"] = dict(dedup.counts)
    report.extra.update(extra)
    atomic_write_text(out / "train.jsonl", "".join(line + "\n" for line in kept_lines))
    report.write(out)
    return {**report.to_dict(), "kept": len(kept_lines), "documents": len(recs)}


def run_refine(cfg: RefineConfig) -> int:
    res = refine(cfg)
    print(f"kept {res['kept']} of {res['documents']} documents -> {Path(cfg.out_dir) / 'train.jsonl'} "
          f"(report: {Path(cfg.out_dir) / 'report.md'})")
    return 0
