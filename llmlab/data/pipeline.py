"""`llmlab data build`: sources -> mix -> normalise -> language id -> quality -> archaic -> exact dedup ->
near dedup (MinHash/LSH) -> PII scrubbing -> train/val split -> JSONL + report.

Streaming: one document at a time flows through every step, so memory holds only the dedup
indexes (hash set, MinHash signatures and LSH buckets), never the corpus. Per-step times in the
report are CPU seconds of this process (`time.process_time`), which stay meaningful when other
jobs share the cores; `total_seconds` is wall-clock.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from llmlab.checkpoint import atomic_file
from llmlab.data.archaic import archaic_score
from llmlab.data.dedup_exact import ExactDeduper
from llmlab.data.langid import detect_language
from llmlab.data.minhash import MinHashConfig, NearDeduper, lsh_threshold
from llmlab.data.mix import mix_documents
from llmlab.data.normalize import normalize_text
from llmlab.data.pii import scrub_pii
from llmlab.data.quality import QualityConfig, quality_reason
from llmlab.data.report import Report
from llmlab.data.sources import SOURCES
from llmlab.data.split import is_val
from llmlab.errors import UserError

DEFAULT_WEIGHTS = {"wiki_en": 1.0, "poetry_en": 1.0, "news_zh": 0.5, "reviews_zh": 0.5, "idioms_zh": 0.25}
QUICK_MAX_DOCS = 300


@dataclass
class DataBuildConfig:
    out_dir: str = field(default="runs/data", metadata={"help": "writes train.jsonl, val.jsonl, report.json, report.md"})
    weights: dict = field(default_factory=dict, metadata={
        "help": f"per-source mixing weights merged over the defaults {DEFAULT_WEIGHTS}; 0 disables a source"})
    max_docs: int = field(default=40_000, metadata={"help": "documents drawn from the mix (0 = until all sources end)"})
    quick: bool = field(default=False, metadata={"help": f"tiny run for tests: at most {QUICK_MAX_DOCS} documents"})
    seed: int = field(default=0, metadata={"help": "seeds the mixing draws and the train/val split"})
    val_fraction: float = field(default=0.05, metadata={"help": "share of documents (not lines) held out"})
    languages: list[str] = field(default_factory=lambda: ["en", "zh"], metadata={"help": "kept language ids"})
    max_archaic: float = field(default=0.01, metadata={
        "help": "drop English docs whose share of archaic marker words (thou, hath, whan; llmlab.data.archaic) "
                "is above this; 1 = keep all"})
    exact_dedup: bool = True
    near_dedup: bool = True
    pii: bool = field(default=True, metadata={"help": "replace emails/phones/IDs/cards/IPs by placeholders"})
    quality: QualityConfig = field(default_factory=QualityConfig)
    minhash: MinHashConfig = field(default_factory=MinHashConfig)
    progress: bool = field(default=True, metadata={"help": "show a tqdm progress bar"})

    def __post_init__(self):
        merged = dict(DEFAULT_WEIGHTS)
        for k, v in (self.weights or {}).items():
            if k not in SOURCES:
                raise ValueError(f"weights: unknown source '{k}'; known: {', '.join(SOURCES)}")
            try:
                merged[k] = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"weights.{k}: expected a number, got {v!r}") from None
            if merged[k] < 0:
                raise ValueError(f"weights.{k}: must be >= 0, got {v!r}")
        self.weights = merged
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.max_docs < 0:
            raise ValueError(f"max_docs must be >= 0, got {self.max_docs}")
        for lang in self.languages:
            if lang not in ("en", "zh", "other"):
                raise ValueError(f"languages: unknown language id '{lang}' (use en, zh, other)")


def _drop_checks(cfg: DataBuildConfig, exact: ExactDeduper, near: NearDeduper) -> list[tuple[str, Callable]]:
    """The filtering steps after language id, in pipeline order: (step, (text, lang) -> the reason
    to drop the document, or None to keep it)."""
    checks: list[tuple[str, Callable]] = [("quality", lambda text, lang: quality_reason(text, lang, cfg.quality))]
    if cfg.max_archaic < 1:  # English only; other documents pass (and are counted as kept)
        checks.append(("archaic", lambda text, lang: "archaic_words"
                       if lang == "en" and archaic_score(text) > cfg.max_archaic else None))
    if cfg.exact_dedup:
        checks.append(("exact_dedup", lambda text, lang: "exact_duplicate" if exact.is_duplicate(text) else None))
    if cfg.near_dedup:
        checks.append(("near_dedup", lambda text, lang: "near_duplicate" if near.is_duplicate(text) else None))
    return checks


def _one_document(raw: str, cfg: DataBuildConfig, checks, report: Report, counts: Counter,
                  pii_counts: Counter) -> tuple[str, str] | None:
    """One document through every step (each timed in CPU seconds and recorded in the report)
    -> (text, language), or None when a step drops it."""
    t = time.process_time()
    text = normalize_text(raw)
    report.record("normalize", raw, bool(text), "empty", text, time.process_time() - t)
    if not text:
        counts["drop_normalize"] += 1
        return None
    t = time.process_time()
    lang = detect_language(text)
    reason, seconds = (None if lang in cfg.languages else f"lang_{lang}"), time.process_time() - t
    for name, check in [("langid", None), *checks]:
        if check is not None:
            t = time.process_time()
            reason = check(text, lang)
            seconds = time.process_time() - t
        report.record(name, text, reason is None, reason, seconds=seconds)
        if reason is not None:
            counts[f"drop_{name}"] += 1
            return None
    if cfg.pii:
        t = time.process_time()
        before = sum(pii_counts.values())
        scrubbed = scrub_pii(text, pii_counts)
        report.record("pii", text, True, out_text=scrubbed, seconds=time.process_time() - t)
        counts["pii_scrubbed_docs"] += int(sum(pii_counts.values()) > before)
        text = scrubbed
    return text, lang


def build(cfg: DataBuildConfig) -> dict:
    """Run the pipeline; returns the report dict (also written to out_dir)."""
    out = Path(cfg.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"out_dir '{out}': cannot create ({e})") from None
    max_docs = min(cfg.max_docs or QUICK_MAX_DOCS, QUICK_MAX_DOCS) if cfg.quick else (cfg.max_docs or None)
    report = Report()
    pii_counts: Counter = Counter()
    written: Counter = Counter()
    docs = mix_documents(SOURCES, cfg.weights, seed=cfg.seed, max_docs=max_docs)
    if cfg.progress:
        from tqdm import tqdm
        docs = tqdm(docs, total=max_docs, desc="data build", unit="doc", mininterval=0.5)
    near = NearDeduper(cfg.minhash)
    checks = _drop_checks(cfg, ExactDeduper(), near)
    for name in ["normalize", "langid", *(n for n, _ in checks)] + (["pii"] if cfg.pii else []):
        report.step(name)  # report rows in pipeline order, whichever document reaches a step first
    t_start, cpu_start = time.perf_counter(), time.process_time()
    # both files are published only when the whole build finishes: a kill or Ctrl-C leaves the old ones
    with atomic_file(out / "train.jsonl") as train_f, atomic_file(out / "val.jsonl") as val_f:
        files = {"train": train_f, "val": val_f}
        for src, raw in docs:
            counts = report.per_source[src]
            counts["drawn"] += 1
            kept = _one_document(raw, cfg, checks, report, counts, pii_counts)
            if kept is None:
                continue
            text, lang = kept
            split = "val" if is_val(text, cfg.val_fraction, cfg.seed) else "train"
            files[split].write(json.dumps({"text": text, "source": src, "lang": lang}, ensure_ascii=False) + "\n")
            written[split] += 1
            counts[split] += 1
            counts[f"{split}_chars"] += len(text)
    if written["train"] == 0:
        raise UserError(f"data build kept no training documents (max_docs={max_docs}, "
                        f"weights={cfg.weights}); raise max_docs or relax the quality.* thresholds")
    report.extra["pii_replacements"] = dict(pii_counts.most_common())
    report.extra["split"] = {"train": written["train"], "val": written["val"]}
    report.extra["minhash"] = {"shingle_size": cfg.minhash.shingle_size, "num_perm": cfg.minhash.num_perm,
                               "bands": cfg.minhash.bands, "rows": cfg.minhash.rows,
                               "threshold": cfg.minhash.threshold,
                               "lsh_s_curve_threshold": round(lsh_threshold(cfg.minhash.bands, cfg.minhash.rows), 4),
                               "candidates_checked": near.candidates_checked}
    report.extra["config"] = {"max_docs": max_docs, "seed": cfg.seed, "val_fraction": cfg.val_fraction,
                              "weights": cfg.weights, "languages": cfg.languages,
                              "max_archaic": cfg.max_archaic}
    report.extra["total_seconds"] = round(time.perf_counter() - t_start, 2)
    report.extra["total_cpu_seconds"] = round(time.process_time() - cpu_start, 2)
    report.write(out)
    return report.to_dict()
