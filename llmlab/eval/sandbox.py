"""Run untrusted (model-generated) Python in a separate, limited process.

Each program runs as `python -I` in a fresh temporary directory (deleted afterwards) with an
empty environment, in its own session (so the whole process group can be killed), with
RLIMIT_CPU (CPU seconds), RLIMIT_AS (address space: an allocation bomb gets MemoryError or is
killed), RLIMIT_FSIZE and RLIMIT_CORE limits, and -- where the kernel allows unprivileged user
namespaces -- in a new network namespace with no interfaces. As a second barrier the program's
prelude replaces socket creation with an error. A wall-clock timeout kills the group with
SIGKILL (a `while True: pass` or `time.sleep(1e9)` never blocks the evaluator). RLIMIT_NPROC 0 and a
seccomp filter forbid child processes (a fork bomb gets EAGAIN; threads still work), and Landlock (llmlab.eval.landlock) confines
the files it can touch to its directory plus read/execute of the Python installation (no other
files, no /proc/<pid>/environ of its parent) and blocks TCP and signals to outside processes.
tests/test_agent_sandbox.py runs the known escapes of in-process executors against it. Still a
guard, not a VM: a kernel exploit is out of scope (see docs/eval.md, docs/agent.md).
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

from llmlab.eval import landlock, seccomp

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
    stdout: str = ""  # the program's output (first 64 KiB)


def _read_paths() -> list[str]:
    """What the interpreter needs to start and import the standard library (read and execute only)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.realpath(sys.executable), "/usr", "/lib", "/lib64",
             "/etc/ld.so.cache", "/dev/urandom", "/dev/null"}
    return sorted(paths)


def _limits(cpu_s: int, mem_bytes: int, workdir: str | None = None):
    reads = _read_paths()

    def apply():  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        try:
            ctypes.CDLL(None, use_errno=True).unshare(_CLONE_NEWUSER | _CLONE_NEWNET)
        except Exception:  # no user namespaces here: the prelude still blocks sockets
            pass
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no child processes (not enforced for root: so
        seccomp.forbid_processes()  # also a seccomp filter: fork/vfork/clone-without-CLONE_THREAD fail)
        if workdir is not None:
            landlock.restrict(reads, [workdir, "/dev/null"])
    return apply


def run_program(code: str, timeout_s: float = 10.0, cpu_s: int = 10, mem_mb: int = 512) -> RunResult:
    """Execute `code`; passed means exit status 0 within the limits."""
    with tempfile.TemporaryDirectory(prefix="llmlab-sandbox-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(_PRELUDE + code)
        proc = subprocess.Popen([sys.executable, "-I", path], cwd=tmp, env={"PATH": "/usr/bin:/bin"},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, preexec_fn=_limits(cpu_s, mem_mb << 20, tmp))
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return RunResult(False, "timeout", f"killed after {timeout_s:g} s wall time")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] if err else []
    stdout = out[:65536].decode("utf-8", "replace")
    if proc.returncode == 0:
        return RunResult(True, "passed", stdout=stdout)
    if proc.returncode == -signal.SIGXCPU or proc.returncode == -signal.SIGKILL:
        return RunResult(False, "timeout", f"killed by signal {-proc.returncode} (CPU limit)")
    if tail and "MemoryError" in tail[0]:
        return RunResult(False, "memory", tail[0], stdout)
    return RunResult(False, "failed", tail[0] if tail else f"exit status {proc.returncode}", stdout)
