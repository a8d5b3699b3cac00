"""`llmlab speedrun quick=true`: the whole path, real packaged text to a report, in one go."""
from __future__ import annotations

import json
import math
import re

from llmlab.cli import main


def test_quick_speedrun_writes_report(tmp_path, capsys):
    rc = main(["speedrun", "quick=true", "name=t", f"runs_dir={tmp_path}"])
    assert rc == 0
    out = tmp_path / "t"
    summary = json.loads((out / "summary.json").read_text())
    pt = summary["stages"]["pretrain"]
    assert pt["steps"] > 0 and math.isfinite(pt["val_bpb"]) and pt["val_bpb"] > 0
    # training lowered the loss below a uniform guess over the vocabulary
    assert pt["train_loss"] < math.log(summary["model"]["vocab_size"])
    report = (out / "report.md").read_text()
    assert "validation bits-per-byte" in report and "llmlab chat model=" in report
    assert (out / "stage_times.png").is_file()
    assert len(summary["samples"]) == 5
    # held-out judgement (issue 24): judge perplexity, instruction scores, clean own-split bits/byte
    j = summary["judgement"]
    assert math.isfinite(j["fluency"]["judge_ppl"]) and 0 <= j["fluency"]["distinct_2"] <= 1
    assert j["fluency"]["human_judge_ppl"] < j["fluency"]["judge_ppl"]  # human text reads better than 40 steps
    assert set(j["instruction"]["scores"]) == {"arithmetic", "greeting", "definition", "idiom"}
    assert j["own_split"]["contamination"]["contaminated_frac"] == 0 and j["own_split"]["docs"] > 0
    assert math.isfinite(j["own_split"]["pretrained"])
    assert "Held-out judgement" in report
    # midtraining: templated conversations in the pretraining shards, none of them a held-out question
    assert summary["stages"]["shards"]["midtrain_docs"] > 0 and (out / "data" / "midtrain.jsonl").is_file()
    # equation lines: about facts_share (default 0.15) of the train tokens, listed for the contamination check
    sh = summary["stages"]["shards"]
    assert sh["fact_docs"] > 0 and 0.08 < sh["fact_tokens"] / sh["train_tokens"] < 0.25
    mid = [json.loads(ln)["text"] for ln in (out / "data" / "midtrain.jsonl").read_text(encoding="utf-8").splitlines()]
    eq = re.compile(r"\d+ ?(?:[+×-]|plus|minus|times|加|减|乘以) ?\d+ ?(?:=|equals|等于) ?\d+[.。]?")
    assert sum(all(eq.fullmatch(x) for x in d.split("\n")) for d in mid) == sh["fact_docs"]
    assert "equation lines" in report and "fp32 |" in report  # quick runs stay fp32
    assert j["instruction"]["leaked"] == [] and j["instruction"]["train_conversations"] > 0
    # decoding chosen on validation prompts, the fixed setting reported beside it
    assert j["fluency"]["decoding"] in [r["decoding"] for r in j["fluency"]["selection"]]
    assert math.isfinite(j["fluency"]["fixed_judge_ppl"])
    assert summary["data_report"]["config"]["max_archaic"] == 0.01
    model_dir = out / "train" / "model"
    assert (model_dir / "config.json").is_file() and (model_dir / "tokenizer.json").is_file()
    # the result chats through the same CLI
    assert main(["generate", f"model={model_dir}", "prompt=The moon", "max_new_tokens=5"]) == 0
    assert "chat with it" in capsys.readouterr().out


def test_bad_sft_mix_fails_before_any_work(tmp_path, capsys):
    for arg, msg in (("sft_mix.arith=1", "unknown kind(s) arith"), ("sft_mix.arith_en=x", "must be numbers"),
                     ("midtrain_share=1.5", "midtrain_share must be in [0, 1)"),
                     ("facts_share=0.95", "facts_share must be in [0, 1)"), ("precision=fp8", "precision must be"),
                     ("sft_hard_share=0.9", "sft_hard_share must be in [0, 0.75]"),
                     ("sft_average_last=-0.1", "sft_average_last must be in [0, 1]"),
                     ("sft_stories=most", "sft_stories must be one of base, more")):
        assert main(["speedrun", arg, f"runs_dir={tmp_path}"]) == 2
        assert msg in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was built


def test_precision_auto_follows_the_hardware(monkeypatch):
    from llmlab.speedrun.pipeline import SpeedrunConfig, use_bf16

    monkeypatch.setenv("LLMLAB_NO_BF16", "1")  # a CPU without native bf16: fp32
    assert not use_bf16(SpeedrunConfig(device="cpu"))
    assert use_bf16(SpeedrunConfig(device="cpu", precision="bf16"))
    monkeypatch.delenv("LLMLAB_NO_BF16")
    import torch
    native = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
                  or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    assert use_bf16(SpeedrunConfig(device="cpu")) == native
    assert not use_bf16(SpeedrunConfig(device="cpu", precision="fp32"))
    assert not use_bf16(SpeedrunConfig(device="cpu", quick=True))  # tests stay fp32


def test_sft_stage_passes_the_tail_average(tmp_path, monkeypatch):
    """`sft_average_last` reaches the SFT config the speedrun trains with (captured before training)."""
    import pytest

    import llmlab.finetune.sft as S
    from llmlab.speedrun.pipeline import SpeedrunConfig, _sft

    (tmp_path / "train" / "model").mkdir(parents=True)
    (tmp_path / "train" / "model" / "config.json").write_text('{"max_position_embeddings": 128}')
    seen = []

    def capture(cfg, **kw):
        seen.append(cfg)
        raise RuntimeError("captured")

    monkeypatch.setattr(S, "sft", capture)
    for value in (0.0, 0.25):
        with pytest.raises(RuntimeError, match="captured"):
            _sft(SpeedrunConfig(quick=True, sft_average_last=value), tmp_path, {"sft": {}}, [])
    assert [c.average_last for c in seen] == [0.0, 0.25]
