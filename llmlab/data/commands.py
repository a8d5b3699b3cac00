"""CLI verbs: `llmlab data build` (corpus JSONL + report) and `llmlab data tokenize` (token shards)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from llmlab.command import Verb
from llmlab.data.pipeline import DataBuildConfig
from llmlab.errors import UserError


@dataclass
class DataTokenizeConfig:
    data_dir: str = field(default="runs/data", metadata={"help": "directory with train.jsonl / val.jsonl from `data build`"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer path (.gguf file or dir with tokenizer.json); required"})
    out_dir: str = field(default="", metadata={"help": "shard output dir (default: <data_dir>/tokens); writes train/ and val/"})
    shard_tokens: int = field(default=1 << 24, metadata={"help": "tokens per shard file (documents never straddle shards)"})
    append_eos: bool = field(default=True, metadata={"help": "append the tokenizer's EOS id after every document"})


def iter_jsonl_texts(path: str | Path):
    """The "text" field of each line of a JSONL file; UserError naming file and line when bad."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"file not found: {p}")
    with open(p, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{p}:{i}: invalid JSON ({e})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise UserError(f"{p}:{i}: expected an object with a string \"text\" field")
            yield rec["text"]


def run_build(cfg: DataBuildConfig) -> int:
    from llmlab.data.pipeline import build
    from llmlab.device import setup_threads

    setup_threads()
    report = build(cfg)
    split = report["split"]
    print(f"wrote {split['train']} train and {split['val']} val documents to {cfg.out_dir} "
          f"(report: {Path(cfg.out_dir) / 'report.md'})")
    return 0


def run_tokenize(cfg: DataTokenizeConfig) -> int:
    from llmlab.data.shards import write_shards
    from llmlab.device import setup_threads
    from llmlab.tokenizer.bpe import load_tokenizer

    setup_threads()
    if not cfg.tokenizer:
        raise UserError("tokenizer is required: pass tokenizer=<path to .gguf or tokenizer dir>")
    if not Path(cfg.tokenizer).exists():
        raise UserError(f"tokenizer not found: {cfg.tokenizer}")
    tok = load_tokenizer(cfg.tokenizer)
    out = Path(cfg.out_dir or Path(cfg.data_dir) / "tokens")
    for split in ("train", "val"):
        index = write_shards(iter_jsonl_texts(Path(cfg.data_dir) / f"{split}.jsonl"), tok, out / split,
                             shard_tokens=cfg.shard_tokens, append_eos=cfg.append_eos)
        print(f"{split}: {index['num_docs']} documents, {index['num_tokens']} tokens ({index['dtype']}) "
              f"in {len(index['shards'])} shard(s) -> {out / split}")
    return 0


VERBS = {
    "data build": Verb(DataBuildConfig, run_build,
                       "build a cleaned, deduplicated, PII-scrubbed train/val corpus from the packaged data",
                       "llmlab data build out_dir=runs/data max_docs=20000 weights.poetry_en=2"),
    "data tokenize": Verb(DataTokenizeConfig, run_tokenize,
                          "tokenize train/val JSONL into memory-mapped token shards",
                          "llmlab data tokenize data_dir=runs/data tokenizer=runs/tok"),
}
