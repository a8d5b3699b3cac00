"""`llmlab train deepspeed=configs/ds_zeroN.json` on 2 gloo processes against one process of
llmlab's own trainer on the same global batch (DeepSpeed is an optional extra)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmlab.checkpoint import load_tensors

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

needs_ds = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                              reason="DeepSpeed not installed: pip install 'llmlab[deepspeed]' (or pip install deepspeed)")


def _run(cmd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "DS_ACCELERATOR": "cpu"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=500)


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


@pytest.mark.slow
@needs_ds
@pytest.mark.parametrize("stage", [3])  # ZeRO-1/2 ride the same engine; the suite stays < 5 min
def test_deepspeed_zero_matches_one_process(tmp_path, stage):
    from test_train_resume import make_shards
    data = make_shards(tmp_path)
    args = [f"data={data}", "depth=1", "max_length=32", "gradient_accumulation_steps=2", "max_steps=3",
            "warmup_steps=1", "learning_rate=3e-3", "logging_steps=1", "disable_tqdm=true", "report_to=jsonl",
            "peak_flops=1e9", "spike_guard=off", "save_steps=0"]
    one, two = tmp_path / "one", tmp_path / "two"
    p = _run([sys.executable, "-m", "llmlab.cli", "train", *args, "per_device_train_batch_size=4",
              f"output_dir={one}", "fused_cross_entropy=false"])
    assert p.returncode == 0, p.stderr[-3000:]
    p = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "llmlab.cli",
              "train", *args, "per_device_train_batch_size=2", f"output_dir={two}",
              f"deepspeed=configs/ds_zero{stage}.json"])
    assert p.returncode == 0, p.stderr[-3000:]
    l1, l2 = _losses(one), _losses(two)
    assert len(l1) == len(l2) == 3 and max(abs(a - b) for a, b in zip(l1, l2)) < 1e-4, (l1, l2)
    w1, w2 = load_tensors(one / "model" / "model.safetensors"), load_tensors(two / "model" / "model.safetensors")
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4


def test_deepspeed_bad_config_is_one_line(tmp_path):
    from llmlab.distributed.deepspeed_loop import load_config
    from llmlab.errors import UserError
    from llmlab.train.config import TrainConfig
    bad = tmp_path / "ds.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_config(str(bad), TrainConfig())
    with pytest.raises(UserError, match="not found"):
        load_config(str(tmp_path / "missing.json"), TrainConfig())
    cfg = load_config("configs/ds_zero3.json", TrainConfig(per_device_train_batch_size=3))
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["train_micro_batch_size_per_gpu"] == 3
