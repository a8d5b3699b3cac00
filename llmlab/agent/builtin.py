"""The agent's standard tools: calculator (safe AST evaluator), python (the eval stage's sandbox:
separate process, time/memory limits, no network, no files outside its folder, no child processes),
retrieve (a RAG index), wikipedia (the packaged English extracts, looked up by title)."""
from __future__ import annotations

import functools
from typing import Annotated

from llmlab.agent.calculator import calculate
from llmlab.agent.tools import ToolRegistry


# what the calculator accepts, as a JSON-schema pattern: constrained tool calls can only write this
EXPRESSION = r"(?:[0-9+*/%()., -]|sqrt|abs|round|min|max){1,80}"


def calculator(expression: Annotated[str, {"pattern": EXPRESSION}]) -> str:
    """Evaluate an arithmetic expression exactly (+ - * / // % ** and sqrt, abs, round, min, max).

    Args:
        expression: the expression, e.g. "(12 + 30) * 3 / 2"
    """
    return str(calculate(expression))


def python(code: str) -> str:
    """Run a short Python program in a sandbox and return what it prints (no network, no files).

    Args:
        code: the program; print the result
    """
    from llmlab.eval.sandbox import run_program
    r = run_program(code, timeout_s=5, cpu_s=5, mem_mb=256)
    out = r.stdout.strip()
    if r.passed:
        return out[:2000] or "(no output: print the result)"
    return (out[:1000] + "\n" if out else "") + f"Error ({r.status}): {r.detail}"


@functools.lru_cache(maxsize=1)
def _wiki_titles() -> dict[str, str]:
    from llmlab.eval.data import wiki_extracts
    return {e["title"].lower(): e["extract"] for e in wiki_extracts() if e.get("title")}


def wikipedia(title: str) -> str:
    """Look up the Wikipedia summary of a topic by its title (offline extracts).

    Args:
        title: the article title, e.g. "Eiffel Tower"
    """
    pages = _wiki_titles()
    key = title.strip().lower()
    if key in pages:
        return pages[key][:1500]
    near = [t for t in pages if key and key in t][:5]
    if near:
        return f"No article '{title}'. Similar titles: " + "; ".join(near)
    return f"No article '{title}'."


def make_registry(names: list[str], index: str = "") -> ToolRegistry:
    reg = ToolRegistry()
    table = {"calculator": calculator, "python": python, "wikipedia": wikipedia}
    for n in names:
        if n == "retrieve":
            if not index:
                from llmlab.errors import UserError
                raise UserError("the retrieve tool needs index=PATH (an index made by llmlab rag index)")
            reg.tool(_retriever(index), name="retrieve")
        elif n in table:
            reg.tool(table[n])
        else:
            from llmlab.errors import UserError
            raise UserError(f"unknown tool '{n}'; known: calculator, python, wikipedia, retrieve")
    return reg


def _retriever(path: str):
    from llmlab.rag.index import RagIndex
    idx = RagIndex(path)

    def retrieve(query: str, k: int = 3) -> str:
        """Search the document index and return the best passages with their sources.

        Args:
            query: what to look for
            k: how many passages
        """
        hits = idx.search(query, max(1, min(k, 10)))
        return "\n".join(f"[{i}] ({h.source}) {h.text[:500]}" for i, h in enumerate(hits, 1))
    return retrieve
