"""The speedrun corpus, built once and cached for every ablation run and the long-context study.

The same data pipeline, mix and BPE trainer as `llmlab speedrun` (llmlab/speedrun/pipeline.py),
smaller: `max_docs` documents and a `vocab_size` vocabulary, tokenized into shards under `root`.
A finished build leaves `corpus.json`; a rerun with the same settings reuses it.
"""
from __future__ import annotations

import json
from pathlib import Path

from llmlab.errors import UserError


def prepare_corpus(root: str | Path, max_docs: int, vocab_size: int, seed: int = 0, progress: bool = True) -> dict:
    """-> {"dir", "train", "val", "tokenizer", "bytes_per_token", "vocab_size", ...} (cached in root/corpus.json)."""
    root = Path(root)
    stamp = root / "corpus.json"
    want = {"max_docs": max_docs, "vocab_size": vocab_size, "seed": seed}
    if stamp.exists():
        info = json.loads(stamp.read_text())
        if all(info.get(k) == v for k, v in want.items()):
            return info
    from llmlab.data.pipeline import DataBuildConfig, build
    from llmlab.data.shards import write_shards
    from llmlab.speedrun.pipeline import SPECIAL_TOKENS, SPEEDRUN_WEIGHTS, _read_texts
    from llmlab.tokenizer.chat import CHATML
    from llmlab.tokenizer.train_bpe import train_bpe

    root.mkdir(parents=True, exist_ok=True)
    build(DataBuildConfig(out_dir=str(root / "data"), max_docs=max_docs, seed=seed, progress=progress,
                          weights=dict(SPEEDRUN_WEIGHTS)))
    train_texts, val_texts = _read_texts(root / "data" / "train.jsonl"), _read_texts(root / "data" / "val.jsonl")
    if not train_texts or not val_texts:
        raise UserError(f"corpus: {len(train_texts)} train / {len(val_texts)} val documents; raise max_docs")
    tok = train_bpe(train_texts, vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, chat_template=CHATML,
                    bos_token=None, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.save(root / "tokenizer")
    tr = write_shards(train_texts, tok, root / "shards" / "train")
    va = write_shards(val_texts, tok, root / "shards" / "val")
    info = {**want, "dir": str(root), "train": str(root / "shards" / "train"), "val": str(root / "shards" / "val"),
            "tokenizer": str(root / "tokenizer"), "vocab": tok.vocab_size,
            "train_tokens": tr["num_tokens"], "val_tokens": va["num_tokens"],
            "bytes_per_token": va["num_bytes"] / max(1, va["num_tokens"])}
    stamp.write_text(json.dumps(info, indent=1))
    return info
