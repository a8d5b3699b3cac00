"""DDP: 2 CPU processes (gloo, 1 thread each, launched by torchrun) follow the same loss trajectory
as 1 process on the same global batch; only rank 0 writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmlab.checkpoint import load_tensors

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from test_train_resume import common, make_shards  # noqa: E402


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-4000:]


def _train_losses(out: Path) -> list[float]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if r["kind"] == "train"]


@pytest.mark.slow  # torchrun + 3 interpreters: ~20 s idle
def test_two_process_ddp_matches_one_process(tmp_path):
    data = make_shards(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    args = lambda out, b: [a for a in common(data, out) if not a.startswith("per_device")] + [  # noqa: E731
        f"per_device_train_batch_size={b}", "spike_guard=off", "max_steps=6", "save_steps=0"]
    _run([sys.executable, "-m", "llmlab.cli", "train", *args(one, 4)])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
          "-m", "llmlab.cli", "train", *args(two, 2)])
    l1, l2 = _train_losses(one), _train_losses(two)
    assert len(l1) == len(l2) == 6  # rank 1 logged nothing
    assert max(abs(a - b) for a, b in zip(l1, l2)) < 1e-5, (l1, l2)
    assert l1[-1] < l1[0]
    w1, w2 = load_tensors(one / "model" / "model.safetensors"), load_tensors(two / "model" / "model.safetensors")
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-5
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
