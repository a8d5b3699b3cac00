"""The speedrun's GPU preset (one H100, ~30 min) starts and trains a few steps on CPU: the same
pipeline, with the `gpu` model sizing (depth 10, width 640) and the GPU data defaults."""
from __future__ import annotations

import json

import pytest

from llmlab.cli import main


@pytest.mark.slow
def test_gpu_preset_runs_a_few_steps_on_cpu(tmp_path):
    rc = main(["speedrun", "preset=gpu", "name=g", f"runs_dir={tmp_path}", "device=cpu", "max_docs=150",
               "vocab_size=512", "max_steps=2", "batch_size=1", "grad_accum=1", "sft_steps=2", "sft_examples=40",
               "eval_items=2", "judge=false"])
    assert rc == 0
    summary = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert summary["model"]["hidden_size"] == 640 and summary["model"]["num_hidden_layers"] == 10
    assert summary["model"]["max_position_embeddings"] == 1024
    assert summary["stages"]["pretrain"]["steps"] == 2 and summary["stages"]["sft"]["steps"] == 2
    assert summary["config"]["eval_steps"] == 500  # a GPU default applied to a field left alone
    # bf16 autocast on CUDA or on a CPU with native bf16 (precision=auto); torch.compile only on CUDA
    from llmlab.device import cpu_bf16_native
    assert summary["train"]["bf16"] is cpu_bf16_native() and summary["train"]["torch_compile"] is False
