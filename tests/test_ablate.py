"""`llmlab ablate`: the row registry, the equal-FLOP budget, the quick grid end to end and its resume."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llmlab.ablate.grid import AblateConfig, model_config, steps_for, summarize
from llmlab.ablate.rows import ROWS, Row, missing, register, select
from llmlab.errors import UserError
from llmlab.model.transformer import flops_per_token
from llmlab.train.config import TrainConfig


def test_registry_rows_build_and_objective_rows_wait():
    cfg = AblateConfig()
    for row in ROWS.values():
        if missing(row, TrainConfig):
            continue
        mc = model_config(cfg, row, 2048, 0)
        for k, v in row.model.items():
            assert getattr(mc, k) == v
    assert missing(ROWS["prefix LM"], TrainConfig) == "needs objectives"
    assert missing(ROWS["encoder-decoder"], TrainConfig) == "needs objectives"
    refs = [r for r in ROWS.values() if not r.model and not r.train]
    assert len(refs) == 8 and {r.key for r in refs} == {"reference"}  # one shared run per seed
    groups = {r.group for r in ROWS.values()}
    assert {"norm placement", "norm", "mlp", "position", "attention", "ffn", "objective", "architecture"} <= groups
    with pytest.raises(UserError, match="unknown ablation rows"):
        select(["nope"], [])
    assert [r.name for r in select([], ["attention"])] == ["MHA", "GQA", "MQA"]


def test_a_row_plugs_in_by_name(monkeypatch):
    monkeypatch.setitem(ROWS, "prefix LM", ROWS["prefix LM"])
    row = register(Row("prefix LM", "objective", train={"max_grad_norm": 0.5}))  # keys that exist here
    assert missing(row, TrainConfig) == "" and ROWS["prefix LM"] is row


def test_equal_flops_steps():
    cfg = AblateConfig()
    ref = model_config(cfg, Row("ref", ""), 2048, 0)
    assert steps_for(cfg, ref, ref) == cfg.max_steps
    for name in ("GQA", "MQA", "GeLU", "MoE 4x top-1", "ALiBi"):
        mc = model_config(cfg, ROWS[name], 2048, 0)
        want = round(cfg.max_steps * flops_per_token(ref, 128) / flops_per_token(mc, 128))
        assert steps_for(cfg, mc, ref) == want
    gqa, mqa = (model_config(cfg, ROWS[n], 2048, 0) for n in ("GQA", "MQA"))
    assert cfg.max_steps < steps_for(cfg, gqa, ref) < steps_for(cfg, mqa, ref)  # fewer FLOPs/token: more tokens
    moe = model_config(cfg, ROWS["MoE 4x top-1"], 2048, 0)  # top-1 of 4 dense-width experts: same active FLOPs
    assert abs(flops_per_token(moe, 128) / flops_per_token(ref, 128) - 1) < 0.01


def test_summary_mean_std_over_seeds():
    cfg = AblateConfig(seeds=[0, 1, 2])
    sig = cfg.signature()
    res = [{"key": "reference", "seed": s, "signature": sig, "val_bpb": v, "steps": 5, "params": 10, "seconds": 1}
           for s, v in [(0, 2.0), (1, 2.2), (2, 2.4)]]
    res.append({"key": "reference", "seed": 0, "signature": "other", "val_bpb": 9.0, "steps": 5, "params": 10,
                "seconds": 1})
    out = summarize(cfg, [ROWS["RoPE"], ROWS["ALiBi"]], res, {})
    assert out[0]["bpb_mean"] == pytest.approx(2.2) and out[0]["bpb_std"] == pytest.approx(0.2)
    assert out[1]["status"] == "not run yet"


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "llmlab.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_quick_grid_runs_resumes_and_rejects_bad_rows(tmp_path):
    import os
    os.environ["OMP_NUM_THREADS"] = "1"
    args = ["ablate", "quick=true", "groups=mlp,objective", f"output_dir={tmp_path}/ab",
            f"corpus_dir={tmp_path}/corpus", "progress=false"]
    r = _cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(x) for x in (tmp_path / "ab" / "results.jsonl").read_text().splitlines()]
    assert sorted(x["row"] for x in lines) == ["GeGLU", "GeLU", "ReLU", "SwiGLU"]  # causal LM = SwiGLU's run
    assert all(x["val_bpb"] > 0 for x in lines)
    table = (tmp_path / "ab" / "table.md").read_text()
    assert "needs objectives" in table and "| objective | causal LM |" in table
    assert (tmp_path / "ab" / "ablation.png").stat().st_size > 1000
    again = _cli(*args, cwd=tmp_path)  # resumable: nothing left to train
    assert again.returncode == 0
    assert len((tmp_path / "ab" / "results.jsonl").read_text().splitlines()) == 4
    bad = _cli("ablate", "quick=true", "rows=nope", f"output_dir={tmp_path}/ab", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown ablation rows" in bad.stderr and "Traceback" not in bad.stderr
    bad = _cli("longctx", "methods=rope2", f"output_dir={tmp_path}/lc", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown" in bad.stderr and "Traceback" not in bad.stderr
