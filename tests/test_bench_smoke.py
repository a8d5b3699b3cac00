"""Every benchmark's `--quick` mode runs and ends with its one-line JSON result (slow set).
Benchmarks are discovered by glob, so a new `benchmarks/*.py` is covered without an edit here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
TIMEOUT_S = int(os.environ.get("LLMLAB_BENCH_SMOKE_TIMEOUT", "420"))  # --quick is ~1 min; slack for a loaded box


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_quick_runs(script, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    try:
        r = subprocess.run([sys.executable, str(script), "--quick"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{script.name} --quick took over {TIMEOUT_S} s")
    assert r.returncode == 0, f"{script.name} --quick exited {r.returncode}:\n{r.stderr[-3000:]}"
    lines = [x for x in r.stdout.strip().splitlines() if x.strip()]
    assert lines, f"{script.name} printed nothing"
    result = json.loads(lines[-1])  # the standard: the last line is one JSON object
    assert result.get("benchmark") and isinstance(result.get("ratio"), dict), lines[-1]
