"""What a CLI verb is: a typed config, a function that runs it, a summary and an example.

Each stage declares its verbs in `llmlab/<stage>/commands.py`: a `VERBS` table filled by
`@verb(VERBS, "name", Config)` on each run function, whose docstring is the verb's help. The CLI
finds the tables there, so adding a verb never means editing a central file.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

EXAMPLE = "Example: "


@dataclass
class Verb:
    config: type  # a dataclass
    run: Callable[[Any], int | None]
    summary: str
    example: str


def help_from_doc(doc: str | None) -> tuple[str, str]:
    """(summary, example) from a run function's docstring: the first paragraph (lines joined) is the
    summary; the paragraph starting `Example: ` is the example, its later lines shown under it."""
    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    summary = " ".join(paragraphs[0].split("\n"))
    example = next((p[len(EXAMPLE):] for p in paragraphs if p.startswith(EXAMPLE)), "")
    return summary, "\n".join(line.strip() for line in example.split("\n")).replace("\n", "\n  ")


def verb(table: dict[str, Verb], name: str, config: type):
    """Decorator: register the function as `llmlab <name>` in `table` (a stage's VERBS); its
    docstring gives the summary and example shown by `llmlab --help` and `llmlab <name> --help`."""
    def register(run: Callable[[Any], int | None]):
        table[name] = Verb(config, run, *help_from_doc(run.__doc__))
        return run
    return register
