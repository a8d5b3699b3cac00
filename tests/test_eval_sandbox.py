"""The code sandbox: limits hold, bad samples are killed and counted, evaluation goes on."""
from __future__ import annotations

import time

from llmlab.eval.sandbox import run_program
from llmlab.eval.tasks.humaneval import load_problems, score_completions


def test_passing_and_failing_programs():
    assert run_program("print('ok')").passed
    r = run_program("assert 1 == 2")
    assert not r.passed and r.status == "failed" and "AssertionError" in r.detail


def test_infinite_loop_is_killed():
    t = time.perf_counter()
    r = run_program("while True:\n    pass\n", timeout_s=2, cpu_s=1)
    assert r.status == "timeout" and time.perf_counter() - t < 10


def test_sleeping_program_is_killed_on_wall_timeout():
    r = run_program("import time\ntime.sleep(60)\n", timeout_s=1)
    assert r.status == "timeout"


def test_memory_bomb_is_stopped():
    r = run_program("x = []\nwhile True:\n    x.append(bytearray(50 << 20))\n", timeout_s=10, mem_mb=256)
    assert not r.passed and r.status in ("memory", "timeout")


def test_no_network_and_private_temp_dir():
    r = run_program("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)\n")
    assert not r.passed
    r = run_program("import os, tempfile\nassert os.getcwd().startswith(tempfile.gettempdir())\n"
                    "assert 'llmlab-sandbox-' in os.getcwd()\nassert os.listdir('.') == ['program.py']\n")
    assert r.passed, r.detail


def test_humaneval_data_and_bad_samples_counted_as_failures():
    probs = load_problems()
    assert len(probs) == 164
    sample = probs[:3]
    good = [p["canonical_solution"] for p in sample]
    bad = ["    while True:\n        pass\n", "    x = ' ' * (1 << 40)\n", good[2]]
    res = score_completions(sample, good, timeout_s=5)
    assert res["pass@1"] == 1.0
    res = score_completions(sample, bad, timeout_s=2)
    assert res["statuses"][:2] == ["timeout", "memory"] and res["statuses"][2] == "passed"
    assert res["pass@1"] == 1 / 3
