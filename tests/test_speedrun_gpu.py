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


def test_gpu_preset_keeps_a_value_the_user_typed_even_if_it_equals_the_cpu_default():
    from llmlab.config import load_config
    from llmlab.speedrun.pipeline import GPU_DEFAULTS, SpeedrunConfig, _apply_preset_defaults

    cpu_default = SpeedrunConfig().sft_steps
    assert GPU_DEFAULTS["sft_steps"] != cpu_default
    typed = load_config(SpeedrunConfig, ["preset=gpu", f"sft_steps={cpu_default}"])
    _apply_preset_defaults(typed)
    assert typed.sft_steps == cpu_default  # typed: kept
    left = load_config(SpeedrunConfig, ["preset=gpu"])
    _apply_preset_defaults(left)
    assert left.sft_steps == GPU_DEFAULTS["sft_steps"]  # left alone: the preset's value
