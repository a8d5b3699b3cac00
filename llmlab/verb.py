"""What a CLI verb is: a typed config, a function that runs it, a summary and an example.

Each stage declares its verbs in `llmlab/<stage>/commands.py` as `VERBS = {"name": Verb(...)}`;
the CLI finds them there, so adding a verb never means editing a central file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class Verb:
    config: type  # a dataclass
    run: Callable[[Any], int | None]
    summary: str
    example: str
