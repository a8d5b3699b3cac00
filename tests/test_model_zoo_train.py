"""`llmlab train preset=<architecture>`: the design comes from the preset, the size from depth."""
from __future__ import annotations

import pytest

from llmlab.errors import UserError
from llmlab.model.hf import load_hf_dir

TEXT = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate. " * 40


@pytest.mark.parametrize("preset,check", [
    ("mixtral", lambda c: c.num_local_experts == 8 and c.router_aux_loss_coef > 0 and c.num_key_value_heads == 1),
    ("phi", lambda c: c.parallel_block and c.lm_head_bias and c.partial_rotary_factor < 1),
])
def test_train_architecture_preset(tmp_path, preset, check):
    from llmlab.config import load_config
    from llmlab.train.commands import VERBS
    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    verb = VERBS["train"]
    cfg = load_config(verb.config, [f"data={tmp_path / 't.txt'}", f"preset={preset}", "depth=2", "max_steps=2",
                                    "max_length=32", "per_device_train_batch_size=2", "gradient_accumulation_steps=1",
                                    f"output_dir={tmp_path / 'out'}", "disable_tqdm=true", "report_to=jsonl",
                                    "peak_flops=1e9"])
    assert verb.run(cfg) == 0
    back = load_hf_dir(tmp_path / "out" / "model")
    assert back.config.hidden_size == 128 and check(back.config)
    with pytest.raises(UserError, match="unknown preset 'gpt5'"):
        verb.run(load_config(verb.config, [f"data={tmp_path / 't.txt'}", "preset=gpt5"]))
