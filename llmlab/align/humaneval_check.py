"""HumanEval checks for preference data, run in the project's one sandbox (`llmlab.eval.sandbox`).

Best effort against honest-but-buggy code (loops, memory blow-ups, sys.exit), not a security
boundary; see llmlab/eval/sandbox.py for the limits applied.
"""
from __future__ import annotations

from llmlab.eval.sandbox import RunResult, run_program

__all__ = ["RunResult", "run_python", "run_humaneval"]


def run_python(program: str, timeout: float = 5.0, mem_mb: int = 512) -> RunResult:
    """Exit status 0 = passed. Any exception, non-zero exit, or limit hit = not passed."""
    return run_program(program, timeout_s=timeout, cpu_s=max(1, int(timeout) + 1), mem_mb=mem_mb)


def run_humaneval(problem: dict, completion: str, timeout: float = 5.0) -> RunResult:
    """HumanEval's check program (Chen et al. 2021): prompt + completion + tests + check(entry_point)."""
    program = (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
               + f"check({problem['entry_point']})\n")
    return run_python(program, timeout)
