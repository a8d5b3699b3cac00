"""Run untrusted (model-generated) Python in a separate, limited process.

Each program runs as `python -I` in a fresh temporary directory (deleted afterwards) with an
empty environment, in its own session (so the whole process group can be killed), with
RLIMIT_CPU (CPU seconds), RLIMIT_AS (address space: an allocation bomb gets MemoryError or is
killed), RLIMIT_FSIZE and RLIMIT_CORE limits, and -- where the kernel allows unprivileged user
namespaces -- in a new network namespace with no interfaces. As a second barrier the program's
prelude replaces socket creation with an error. A wall-clock timeout kills the group with
SIGKILL (a `while True: pass` or `time.sleep(1e9)` never blocks the evaluator). This is a
guard against accidents, not a security boundary against a determined attacker (see
docs/eval.md).
"""
from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000

_PRELUDE = """\
import socket as _s
def _no_net(*a, **k):
    raise OSError("network access is disabled in the llmlab sandbox")
_s.socket = _no_net; _s.create_connection = _no_net; _s.getaddrinfo = _no_net
del _s, _no_net
"""


@dataclass
class RunResult:
    passed: bool
    status: str  # passed | failed | timeout | memory
    detail: str = ""


def _limits(cpu_s: int, mem_bytes: int):
    def apply():  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        try:
            ctypes.CDLL(None, use_errno=True).unshare(_CLONE_NEWUSER | _CLONE_NEWNET)
        except Exception:  # no user namespaces here: the prelude still blocks sockets
            pass
    return apply


def run_program(code: str, timeout_s: float = 10.0, cpu_s: int = 10, mem_mb: int = 512) -> RunResult:
    """Execute `code`; passed means exit status 0 within the limits."""
    with tempfile.TemporaryDirectory(prefix="llmlab-sandbox-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(_PRELUDE + code)
        proc = subprocess.Popen([sys.executable, "-I", path], cwd=tmp, env={"PATH": "/usr/bin:/bin"},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, preexec_fn=_limits(cpu_s, mem_mb << 20))
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return RunResult(False, "timeout", f"killed after {timeout_s:g} s wall time")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] if err else []
    if proc.returncode == 0:
        return RunResult(True, "passed")
    if proc.returncode == -signal.SIGXCPU or proc.returncode == -signal.SIGKILL:
        return RunResult(False, "timeout", f"killed by signal {-proc.returncode} (CPU limit)")
    if tail and "MemoryError" in tail[0]:
        return RunResult(False, "memory", tail[0])
    return RunResult(False, "failed", tail[0] if tail else f"exit status {proc.returncode}")
