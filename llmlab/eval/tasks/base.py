"""What a packaged eval task declares, in its class line:
`class Arithmetic(Task, kind="generate", name="arithmetic", default_limit=50)`.

kind: generate | multiple_choice | perplexity (how `llmlab eval` scores it); name: the key of
`tasks=`; version: bumped when the items change; default_limit: items scored when `limit=0`.
Each task also has `items(limit, seed)` and its kind's scoring method.
"""
from __future__ import annotations


class Task:
    version = "1"

    def __init_subclass__(cls, kind: str = "", name: str = "", default_limit: int = 0, **kwargs):
        super().__init_subclass__(**kwargs)
        for key, value in (("kind", kind), ("name", name), ("default_limit", default_limit)):
            if value:
                setattr(cls, key, value)
