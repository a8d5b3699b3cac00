"""CLI verb `llmlab data build` (corpus JSONL + report). `llmlab data tokenize` (token shards)
needs a tokenizer, a later stage, so it lives in llmlab/tokenizer/commands.py (imports flow forward)."""
from __future__ import annotations

from pathlib import Path

from llmlab.verb import Verb, verb
from llmlab.data.pipeline import DataBuildConfig
from llmlab.data.packages import iter_jsonl

VERBS: dict[str, Verb] = {}


def _has_text(rec: dict) -> None:
    if not isinstance(rec.get("text"), str):
        raise ValueError('expected an object with a string "text" field')


def iter_jsonl_texts(path: str | Path):
    """The "text" field of each line of a JSONL file; UserError naming file and line when bad."""
    return (rec["text"] for rec in iter_jsonl(path, validate=_has_text))


@verb(VERBS, "data build", DataBuildConfig)
def run_build(cfg: DataBuildConfig) -> int:
    """build a cleaned, deduplicated, PII-scrubbed train/val corpus from the packaged data

    Example: llmlab data build out_dir=runs/data max_docs=20000 weights.poetry_en=2
    """
    from llmlab.data.pipeline import build
    from llmlab.device import setup_threads

    setup_threads()
    report = build(cfg)
    split = report["split"]
    print(f"wrote {split['train']} train and {split['val']} val documents to {cfg.out_dir} "
          f"(report: {Path(cfg.out_dir) / 'report.md'})")
    return 0


def _refine_verb():
    from llmlab.data.refine import RefineConfig, run_refine
    return Verb(RefineConfig, run_refine,
                "sentence-level dedup + quality classifier + perplexity filter on a built corpus (with a report)",
                "llmlab data refine data=runs/data/train.jsonl out_dir=runs/data_refined")


VERBS["data refine"] = _refine_verb()
