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
    (["prune", "recovery_steps=-1"], "recovery_steps >= 0"),
    (["prune", "eval_windows=0"], "eval_windows must be >= 1"),
    (["prune", "num_calibration_samples=0"], "num_calibration_samples must be >= 1"),
    (["distill", "student_heads=3"], "student_heads=3 does not divide student_hidden=128"),
    (["distill", "seq_len=1"], "seq_len >= 2"),
    (["distill", "eval_windows=0"], "eval_windows must be >= 1"),
    (["distill", "temperature=0"], "temperature and learning_rate must be > 0"),
])
def test_bad_input(args, msg):
    r = subprocess.run([sys.executable, "-m", "llmlab.cli", *args], capture_output=True, text=True)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.slow
def test_output_dir_of_other_files_is_refused_before_any_work(tmp_path):
    """A file, or a folder of the user's own files, at output_dir: one line, exit code 2, before the model
    loads, and nothing there is changed (it used to be replaced, the folder deleted)."""
    (tmp_path / "f").write_text("mine", encoding="utf-8")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "thesis.tex").write_text("mine", encoding="utf-8")
    for verb in ("prune", "distill"):
        for out, msg in (("f", "not a directory"), ("d", "holds other files")):
            r = subprocess.run([sys.executable, "-m", "llmlab.cli", verb, f"output_dir={tmp_path / out}"],
                               capture_output=True, text=True)
            assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
            assert "loaded" not in r.stderr, r.stderr  # refused before loading the model
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["d", "f", "thesis.tex"]
