"""Run untrusted Python (a candidate solution plus its tests) in a separate, limited process.

Isolation is best-effort and POSIX-only: `python -I` (no user site, no env vars), a fresh temp
working dir, an empty environment, CPU-time / address-space / file-size / open-file rlimits, and a
wall-clock timeout that kills the child's whole process group. It keeps honest-but-buggy code
(infinite loops, memory blow-ups, sys.exit) from hurting the trainer; it is not a security boundary
against malicious code.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass


@dataclass
class RunResult:
    passed: bool
    status: str  # "passed", "failed", "timeout"
    detail: str


def _limits(cpu_s: int, mem_bytes: int):
    def apply():  # runs in the child between fork and exec
        import resource
        os.setsid()
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def run_python(program: str, timeout: float = 5.0, mem_mb: int = 512) -> RunResult:
    """Exit status 0 = passed. Any exception, non-zero exit, or limit hit = not passed."""
    with tempfile.TemporaryDirectory(prefix="llmlab-sandbox-") as tmp:
        path = os.path.join(tmp, "prog.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(program)
        proc = subprocess.Popen([sys.executable, "-I", "-B", path], cwd=tmp, env={"PATH": "/usr/bin:/bin"},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=_limits(max(1, int(timeout) + 1), mem_mb << 20))
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return RunResult(False, "timeout", f"killed after {timeout}s")
    if proc.returncode == 0:
        return RunResult(True, "passed", "")
    tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
    return RunResult(False, "failed", tail[0][:300])


def run_humaneval(problem: dict, completion: str, timeout: float = 5.0) -> RunResult:
    """HumanEval's check program (Chen et al. 2021): prompt + completion + tests + check(entry_point)."""
    program = (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
               + f"check({problem['entry_point']})\n")
    return run_python(program, timeout)
