"""Evaluation tasks built from packaged data; `get_task(name)` / `TASKS` is the registry."""
from __future__ import annotations

from llmlab.errors import UserError


def _registry() -> dict:
    from llmlab.eval.tasks.arithmetic import Arithmetic
    from llmlab.eval.tasks.cloze import WikiCloze
    from llmlab.eval.tasks.humaneval import HumanEval
    from llmlab.eval.tasks.idiom import ChineseIdiom
    from llmlab.eval.tasks.ifeval import IFEvalLite
    from llmlab.eval.tasks.math_boxed import MathBoxed
    from llmlab.eval.tasks.mmlu import MMLU
    from llmlab.eval.tasks.perplexity import HeldOutPerplexity

    tasks = [HeldOutPerplexity("en"), HeldOutPerplexity("zh"), HumanEval(), MMLU(0), MMLU(3),
             Arithmetic(), WikiCloze(), IFEvalLite(), ChineseIdiom(), MathBoxed()]
    return {t.name: t for t in tasks}


def task_names() -> list[str]:
    return list(_registry())


def get_task(name: str):
    """A registered task name, or a path to a .jsonl task file (see llmlab.eval.tasks.custom)."""
    if name.endswith((".jsonl", ".jsonl.gz")):
        from llmlab.eval.tasks.custom import JsonlTask
        return JsonlTask(name)
    reg = _registry()
    if name not in reg:
        raise UserError(f"unknown eval task '{name}'; known tasks: {', '.join(reg)} (or a .jsonl file)")
    return reg[name]
