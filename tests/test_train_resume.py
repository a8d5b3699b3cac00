"""Exact resume: a run SIGKILLed after a checkpoint and resumed ends bit-identical to an uninterrupted
run; corrupt / truncated checkpoints are detected and never loaded."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmlab.checkpoint import load_tensors
from llmlab.errors import UserError
from llmlab.model import ModelConfig, Transformer
from llmlab.train import train_state as ckpt
from llmlab.train.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [f"Line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13} times. " * 3 for i in range(60)]


class ByteTok:
    vocab_size, eos_id = 257, 256

    @staticmethod
    def encode(text):
        return list(text.encode("utf-8"))


def make_shards(tmp: Path) -> Path:
    from llmlab.data.shards import write_shards
    write_shards(TEXTS[:50], ByteTok, tmp / "tokens" / "train", shard_tokens=4000)
    write_shards(TEXTS[50:], ByteTok, tmp / "tokens" / "val")
    return tmp / "tokens"


def cli(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "llmlab.cli", "train", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stderr[-3000:]}")
    return p


def common(data: Path, out: Path) -> list[str]:
    return [f"data={data}", f"output_dir={out}", "depth=1", "max_length=32", "per_device_train_batch_size=4",
            "gradient_accumulation_steps=2", "max_steps=10", "save_steps=4", "eval_steps=4", "eval_batches=2",
            "warmup_steps=2", "learning_rate=3e-3", "logging_steps=1", "disable_tqdm=true", "report_to=jsonl",
            "peak_flops=1e9", "spike_min_steps=3", "save_total_limit=0"]


def losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "train"]


@pytest.mark.slow  # three CLI subprocesses: ~15 s idle, ~60 s on a loaded 2-core box
def test_sigkill_then_resume_is_bit_identical(tmp_path):
    data = make_shards(tmp_path)
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    cli(common(data, full))
    p = cli(common(data, crashed) + ["debug_kill_at_step=6"], check=False)
    assert p.returncode == -signal.SIGKILL, f"exit {p.returncode}: {p.stderr[-4000:]}"
    names = sorted(d.name for d in crashed.iterdir() if d.name.startswith("checkpoint-"))
    assert names == ["checkpoint-4"]  # killed mid-run, after the step-4 checkpoint, before step 8
    assert not (crashed / "model").exists()
    cli(common(data, crashed) + ["resume_from_checkpoint=auto"])
    a = load_tensors(full / "model" / "model.safetensors")
    b = load_tensors(crashed / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit for bit
    oa = load_tensors(full / "checkpoint-10" / "optimizer.safetensors")
    ob = load_tensors(crashed / "checkpoint-10" / "optimizer.safetensors")
    assert all(torch.equal(oa[k], ob[k]) for k in oa)
    assert losses(full) == losses(crashed)  # same trajectory, steps 5-6 logged once (redone, deduplicated)
    assert [s for s, _ in losses(crashed)] == list(range(1, 11))


def test_in_process_resume_is_bit_identical(tmp_path):
    """The same property without subprocesses: stop after a checkpoint, resume into a fresh model."""
    from llmlab.data.loader import TokenWindowLoader
    from llmlab.train import TrainConfig, train

    data = make_shards(tmp_path)

    def run(out, steps, resume=None):
        torch.manual_seed(123 if resume else 0)  # a resumed model starts from different weights
        m = Transformer(ModelConfig(vocab_size=257, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    max_position_embeddings=32))
        cfg = TrainConfig(output_dir=str(out), max_steps=steps, max_length=32, per_device_train_batch_size=4,
                          save_steps=3, warmup_steps=2, learning_rate=3e-3, disable_tqdm=True, report_to=["jsonl"],
                          peak_flops=1e9, resume_from_checkpoint=resume, spike_min_steps=2)
        tl = TokenWindowLoader(data / "train", 32, 4, seed=0)
        return m, train(cfg, m, tl)

    full, _ = run(tmp_path / "a", 8)
    want = {k: v.clone() for k, v in full.state_dict().items()}
    shutil.rmtree(tmp_path / "a" / "checkpoint-8")  # as if killed after the step-6 checkpoint
    resumed, res = run(tmp_path / "a", 8, resume="auto")
    assert res.step == 8
    for k, v in resumed.state_dict().items():
        assert torch.equal(want[k], v), k


def _tiny_state(tmp_path):
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                max_position_embeddings=16))
    opt = build_optimizer(m, 1e-2, 0.1, (0.9, 0.95), 1e-8)
    m.loss(torch.randint(0, 50, (2, 8)), torch.randint(0, 50, (2, 8))).backward()
    opt.step()
    rng_t, rng_j = ckpt.rng_state()
    state = {"step": 1, "lr_mult": 1.0, "tokens": 16, "spike_guard": {}, "loader_states": [None], "rng": [rng_j]}
    path = ckpt.save_checkpoint(tmp_path / "checkpoint-1", m, opt, state, {f"rank0.{k}": v for k, v in rng_t.items()})
    return m, opt, path


def test_checkpoint_roundtrip_restores_model_and_optimizer(tmp_path):
    m, opt, path = _tiny_state(tmp_path)
    torch.manual_seed(1)
    m2 = Transformer(m.config)
    opt2 = build_optimizer(m2, 1e-2, 0.1, (0.9, 0.95), 1e-8)
    ts, rng = ckpt.load_checkpoint(path, m2, opt2)
    assert ts["step"] == 1 and rng["rank0.torch_cpu"].dtype == torch.uint8
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    assert m2.lm_head.weight is m2.model.embed_tokens.weight  # still tied
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for i in s1["state"]:
        for k in s1["state"][i]:
            assert torch.equal(torch.as_tensor(s1["state"][i][k]), torch.as_tensor(s2["state"][i][k]))
    assert not list(path.rglob("*.pt")) and not list(path.rglob("*.bin"))  # no pickles


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_manifest", "delete_file"])
def test_damaged_checkpoint_is_never_loaded(tmp_path, damage):
    m, opt, path = _tiny_state(tmp_path)
    weights = path / "model" / "model.safetensors"
    if damage == "truncate":
        data = weights.read_bytes()
        weights.write_bytes(data[:len(data) // 2])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF  # inside the tensor data: still a parseable safetensors file
        weights.write_bytes(bytes(data))
    elif damage == "delete_manifest":
        (path / "manifest.json").unlink()
    else:
        (path / "optimizer.safetensors").unlink()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(UserError, match="not loading it"):
        ckpt.load_checkpoint(path, m, opt)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # untouched
    assert ckpt.latest_valid(tmp_path) is None


def test_latest_valid_skips_a_damaged_newer_checkpoint(tmp_path):
    _, _, path = _tiny_state(tmp_path)
    newer = tmp_path / "checkpoint-2"
    shutil.copytree(path, newer)
    (newer / "trainer_state.json").write_text("{}")
    assert ckpt.latest_valid(tmp_path) == path
