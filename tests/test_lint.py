"""Static check in `make test`: ruff with the pyflakes rules ([tool.ruff] in pyproject.toml) over the
package, the tests and the benchmarks. It catches what a test may never reach, e.g. the undefined
name that broke `python benchmarks/align.py`'s full run."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if Path(exe).is_file():
        return [exe]
    try:
        import ruff  # noqa: F401
    except ImportError:
        pytest.skip("ruff is not installed (pip install ruff)")
    return [sys.executable, "-m", "ruff"]


def test_ruff_pyflakes_clean():
    r = subprocess.run(_ruff() + ["check", "--no-cache", "--output-format", "concise", "llmlab", "tests", "benchmarks"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_catches_an_undefined_name(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    return logprob_preference_accuracy(1)\n")
    r = subprocess.run(_ruff() + ["check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "F821" in r.stdout
