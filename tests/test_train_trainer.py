"""The training loop end to end on an in-memory token array: it learns, it logs, it fails clearly."""
from __future__ import annotations

import json
import math

import pytest
import torch

from llmlab.errors import UserError
from llmlab.model import ModelConfig, Transformer
from llmlab.model.hf import load_hf_dir
from llmlab.train import TokenArrayLoader, TrainConfig, train

TEXT = ("Tyger Tyger, burning bright, In the forests of the night; What immortal hand or eye, "
        "Could frame thy fearful symmetry? ") * 40
TOKENS = torch.tensor(list(TEXT.encode()))


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   max_position_embeddings=32, **kw))


def cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=30, max_length=32, per_device_train_batch_size=4,
                learning_rate=1e-2, warmup_steps=3, logging_steps=5, disable_tqdm=True, report_to=["jsonl"],
                peak_flops=1e9, spike_guard="off")
    return TrainConfig(**{**base, **kw})


def loaders(b=4, t=32):
    return TokenArrayLoader(TOKENS[:4000], t, b), TokenArrayLoader(TOKENS[4000:], t, 2, loop=False)


def test_learns_and_writes_metrics_tensorboard_png_and_model(tmp_path):
    m = tiny_model()
    tl, vl = loaders()
    res = train(cfg(tmp_path, eval_steps=10, bytes_per_token=1.0, report_to=["jsonl", "tensorboard", "png"]),
                m, tl, vl)
    assert res.step == 30 and res.tokens == 30 * 4 * 32
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if r["kind"] == "train"]
    evals = [r for r in recs if r["kind"] == "eval"]
    assert [r["step"] for r in train_recs] == [5, 10, 15, 20, 25, 30]
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert train_recs[-1]["loss"] < train_recs[0]["loss"] - 1.0  # it learns the poem
    assert evals[-1]["val_loss"] < math.log(256)
    assert evals[-1]["val_bpb"] == pytest.approx(evals[-1]["val_loss"] / math.log(2))  # 1 byte per token
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] for r in train_recs)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    back = load_hf_dir(tmp_path / "model")  # an HF-style dir
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), back.state_dict().values()))


def test_gradient_accumulation_equals_the_big_batch(tmp_path):
    a, b = tiny_model(), tiny_model()
    train(cfg(tmp_path / "a", max_steps=3, per_device_train_batch_size=8, gradient_accumulation_steps=1), a,
          TokenArrayLoader(TOKENS, 32, 8), None)
    train(cfg(tmp_path / "b", max_steps=3, per_device_train_batch_size=4, gradient_accumulation_steps=2), b,
          TokenArrayLoader(TOKENS, 32, 4), None)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), k


def test_gradient_checkpointing_same_trajectory(tmp_path):
    a, b = tiny_model(), tiny_model()
    train(cfg(tmp_path / "a", max_steps=3), a, loaders()[0], None)
    train(cfg(tmp_path / "b", max_steps=3, gradient_checkpointing=True), b, loaders()[0], None)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), k


def test_unfused_loss_same_trajectory_and_bf16_runs(tmp_path):
    a, b, c = tiny_model(), tiny_model(), tiny_model()
    train(cfg(tmp_path / "a", max_steps=3), a, loaders()[0], None)
    train(cfg(tmp_path / "b", max_steps=3, fused_cross_entropy=False), b, loaders()[0], None)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-5), k
    res = train(cfg(tmp_path / "c", max_steps=2, bf16=True), c, loaders()[0], None)
    assert math.isfinite(res.train_loss) and next(c.parameters()).dtype == torch.float32  # fp32 master weights


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="empty data"):
        TokenArrayLoader(torch.zeros(0, dtype=torch.long), 32, 4)
    with pytest.raises(UserError, match="fewer than one global batch"):
        TokenArrayLoader(TOKENS[:100], 32, 4)
    with pytest.raises(UserError, match="fp16=true needs a CUDA GPU"):
        train(cfg(tmp_path, fp16=True), tiny_model(), loaders()[0], None)
    with pytest.raises(UserError, match="does not fit in memory.*per_device_train_batch_size"):
        train(cfg(tmp_path, per_device_train_batch_size=10 ** 7, max_length=32), tiny_model(), loaders()[0], None)
    with pytest.raises(UserError, match="exceeds the model's max_position_embeddings"):
        train(cfg(tmp_path, max_length=64), tiny_model(), TokenArrayLoader(TOKENS, 64, 2), None)
    with pytest.raises(UserError, match="checkpoint not found"):
        train(cfg(tmp_path, resume_from_checkpoint=str(tmp_path / "nope")), tiny_model(), loaders()[0], None)

    class Empty:
        def __iter__(self):
            return iter(())

    with pytest.raises(UserError, match="yielded no batches"):
        train(cfg(tmp_path), tiny_model(), Empty(), None)
    from llmlab.config import from_dict
    with pytest.raises(UserError, match="lr_scheduler_type"):
        from_dict(TrainConfig, {"lr_scheduler_type": "exp"})
    with pytest.raises(UserError, match="bf16 and fp16"):
        from_dict(TrainConfig, {"bf16": "true", "fp16": "true"})


def test_cli_verb_with_preset_on_a_text_file(tmp_path, capsys):
    from llmlab.config import load_config
    from llmlab.train.commands import VERBS

    (tmp_path / "poem.txt").write_text(TEXT, encoding="utf-8")
    verb = VERBS["train"]
    cfg = load_config(verb.config, [f"data={tmp_path / 'poem.txt'}", "preset=tiny", "max_steps=2",
                                    "gradient_accumulation_steps=2", f"output_dir={tmp_path / 'out'}",
                                    "disable_tqdm=true", "report_to=jsonl", "peak_flops=1e9"])
    assert verb.run(cfg) == 0
    assert (cfg.max_length, cfg.per_device_train_batch_size, cfg.depth) == (64, 8, 2)  # from the preset
    back = load_hf_dir(tmp_path / "out" / "model")
    assert back.config.hidden_size == 128 and back.config.max_position_embeddings == 64
    assert "val bits/byte" in capsys.readouterr().out
    with pytest.raises(UserError, match="unknown preset"):
        verb.run(load_config(verb.config, [f"data={tmp_path / 'poem.txt'}", "preset=huge"]))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="empty file"):
        verb.run(load_config(verb.config, [f"data={tmp_path / 'empty.txt'}"]))
