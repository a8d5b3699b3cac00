"""`llmlab prune` / `llmlab distill`: bad input is one line and exit code 2."""
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("args,msg", [
    (["prune", "method=random"], "unknown pruning method"),
    (["prune", "sparsity=1.5"], "sparsity must be"),
    (["prune", "sweep=0.1,0.5"], "needs plot="),
    (["prune", "method=lowrank"], "needs rank="),
    (["prune", "method=owl", "sparsity=0.05", "owl_lambda=0.1"], "owl_lambda"),
    (["distill", "alpha=2"], "alpha"),
])
def test_bad_input(args, msg):
    r = subprocess.run([sys.executable, "-m", "llmlab.cli", *args], capture_output=True, text=True)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
