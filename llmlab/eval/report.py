"""The report card: one JSON file (scores, chance baselines, task versions, seed, model hash,
contamination) and a markdown table rendered from it."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from llmlab.checkpoint import atomic_write_text

# the headline metric(s) of each kind of result, in display order
_METRICS = ["bits_per_byte", "perplexity", "acc", "acc_norm", "acc_macro", "exact_match", "f1", "pass@1",
            "prompt_acc", "instruction_acc"]


def model_hash(path: str | Path) -> str:
    """sha256 of the weight file, or of a directory's files (sorted by name, names included)."""
    p = Path(path)
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def make_card(model_ref: str, model_path: str | Path, seed: int, settings: dict, results: list[dict],
              sha256: str | None = None) -> dict:
    return {"model": model_ref, "model_path": str(model_path), "model_sha256": sha256 or model_hash(model_path),
            "seed": seed, "settings": settings, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tasks": results}


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}" if abs(x) >= 100 else f"{x:.3f}"
    return str(x)


def markdown_table(card: dict) -> str:
    lines = [f"Model `{card['model']}` (sha256 {card['model_sha256'][:12]}), seed {card['seed']}.", "",
             "| task | version | n | metric | score | chance | contaminated | truncated |",
             "|---|---|---|---|---|---|---|---|"]
    for r in card["tasks"]:
        chance = r.get("chance")
        cont = r.get("contamination")
        cont_s = f"{cont['contaminated_frac']:.1%} ({cont['ngram']}-gram)" if cont else "not checked"
        for m in _METRICS:
            if m not in r:
                continue
            c = chance.get(m, "") if isinstance(chance, dict) else chance
            lines.append(f"| {r['task']} | {r['version']} | {r['n']} | {m} | {_fmt(r[m])} | "
                         f"{_fmt(c) if c is not None else ''} | {cont_s} | {r.get('truncated', 0)} |")
    return "\n".join(lines) + "\n"


def write_card(card: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jp, mp = out / "report_card.json", out / "report_card.md"
    atomic_write_text(jp, json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(mp, markdown_table(card))
    return jp, mp
