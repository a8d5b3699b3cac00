"""`llmlab ablate`: the row registry, the equal-FLOP budget, the quick grid end to end and its resume."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from llmlab.ablate.grid import AblateConfig, model_config, steps_for, summarize
from llmlab.ablate.rows import ROWS, Row, missing, register, select
from llmlab.errors import UserError
from llmlab.model.transformer import flops_per_token
from llmlab.train.config import TrainConfig


def test_registry_rows_build_and_objective_rows_run():
    cfg = AblateConfig()
    for row in ROWS.values():
        assert missing(row, TrainConfig) == "", row.name  # the objectives and llmlab.model.encdec exist
        mc = model_config(cfg, row, 2048, 0)
        for k, v in row.model.items():
            assert getattr(mc, k) == v
    assert missing(Row("x", "g", needs=("llmlab.nope",), missing_label="needs nope"), TrainConfig) == "needs nope"
    assert missing(Row("x", "g", train={"nope": 1}), TrainConfig) == "unknown nope"
    refs = [r for r in ROWS.values() if not r.model and not r.train]
    assert len(refs) == 6 and {r.key for r in refs} == {"reference"}  # one shared run per seed
    assert ROWS["causal LM"].key == ROWS["decoder-only"].key != "reference"  # shared objective vocabulary
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
    res.append({**res[0], "val_bpb": 5.0})  # a second line for (reference, seed 0), e.g. two racing workers
    out = summarize(cfg, [ROWS["RoPE"], ROWS["ALiBi"]], res, {})
    assert out[0]["bpb_mean"] == pytest.approx(2.2) and out[0]["bpb_std"] == pytest.approx(0.2)
    assert out[0]["seeds"] == 3  # the duplicate line is not a fourth seed
    assert out[1]["status"] == "not run yet"


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "llmlab.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_quick_grid_runs_resumes_and_rejects_bad_rows(tmp_path):
    import os
    os.environ["OMP_NUM_THREADS"] = "1"
    args = ["ablate", "quick=true", "groups=mlp", f"output_dir={tmp_path}/ab",
            f"corpus_dir={tmp_path}/corpus", "progress=false"]
    r = _cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(x) for x in (tmp_path / "ab" / "results.jsonl").read_text().splitlines()]
    assert sorted(x["row"] for x in lines) == ["GeGLU", "GeLU", "ReLU", "SwiGLU"]  # the reference's run
    assert all(x["val_bpb"] > 0 for x in lines)
    # one thread: the run's CPU time is positive and at most its wall time (small slack for clock reads)
    assert all(0 < x["cpu_seconds"] <= x["wall_seconds"] + 0.5 for x in lines)
    table = (tmp_path / "ab" / "table.md").read_text()
    assert "| mlp | GeLU |" in table and "| — |" in table  # no span-infill score outside the objective rows
    assert (tmp_path / "ab" / "ablation.png").stat().st_size > 1000
    again = _cli(*args, cwd=tmp_path)  # resumable: nothing left to train
    assert again.returncode == 0
    assert len((tmp_path / "ab" / "results.jsonl").read_text().splitlines()) == 4
    bad = _cli("ablate", "quick=true", "rows=nope", f"output_dir={tmp_path}/ab", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown ablation rows" in bad.stderr and "Traceback" not in bad.stderr
    bad = _cli("longctx", "methods=rope2", f"output_dir={tmp_path}/lc", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown" in bad.stderr and "Traceback" not in bad.stderr


class _Windows(list):
    """A one-pass (x, y) window loader, as the grid's val loader."""


def _windows(vocab, T, n_batches=2, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = _Windows()
    for _ in range(n_batches):
        w = torch.randint(0, vocab, (B, T + 1), generator=g)
        out.append((w[:, :-1], w[:, 1:]))
    return out


def _by_hand(model, ids, layout, windows, start=0):
    """Span-infilling CE per target token (all; span tokens only), one unpadded example at a time."""
    import numpy as np
    import torch.nn.functional as F

    from llmlab.ablate.objrows import INFILL_SEED
    from llmlab.train.objectives import build_objective
    obj, total, n, total_s, n_s = build_objective("span_corruption"), 0.0, 0, 0.0, 0
    sentinels = {ids[t] for t in obj.special_tokens}
    for b, (x, y) in enumerate(windows):
        rng = np.random.default_rng([INFILL_SEED, b])
        for w in torch.cat([x, y[:, -1:]], 1):
            ex = obj.example(w.tolist(), rng, ids, None)
            tgt = torch.tensor(ex.targets)
            if layout == "seq2seq":
                logits = model(input_ids=torch.tensor([ex.inputs]), decoder_input_ids=torch.tensor([[start] + ex.targets[:-1]]))[0]
            else:
                seq, k = torch.tensor([ex.inputs + ex.targets]), len(ex.inputs)
                kw = {"prefix_lengths": k} if layout == "prefix" else {}
                logits = model(seq[:, :-1], **kw)[0, k - 1:]
            ce = F.cross_entropy(logits.float(), tgt, reduction="none").detach()
            span = torch.tensor([t not in sentinels for t in ex.targets])
            total, n, total_s, n_s = total + float(ce.sum()), n + len(tgt), total_s + float(ce[span].sum()), n_s + int(span.sum())
    return total / n, total_s / n_s


@pytest.mark.parametrize("objective,arch,layout", [("causal_lm", "", "causal"), ("ul2", "", "prefix"),
                                                    ("span_corruption", "encoder_decoder", "seq2seq")])
def test_objective_row_metrics_by_hand(objective, arch, layout):
    import math

    import torch.nn.functional as F

    from llmlab.ablate.objrows import build, causal_bpb, infill_loss
    cfg = AblateConfig(quick=True)
    row = Row("r", "objective", train={"objective": objective, **({"architecture": arch} if arch else {})})
    st, fpt = build(cfg, row, model_config(cfg, row, 64, 1), 64, 1, 0)
    assert st.layout == layout and fpt > 0
    assert all(i >= 64 for i in st.ids.values()) and "<extra_id_0>" in st.ids
    val = _windows(64, cfg.context)
    got = infill_loss(st.model, st.ids, st.layout, val)
    start = getattr(st.model.config, "decoder_start_token_id", 0)
    assert got == pytest.approx(_by_hand(st.model, st.ids, layout, val, start), rel=1e-5)
    assert got[1] != pytest.approx(got[0], rel=1e-4)  # the sentinel targets are left out of the second
    assert all(0.5 * math.log(st.model.config.vocab_size) < v < 2 * math.log(st.model.config.vocab_size) for v in got)
    if layout != "seq2seq":  # plain causal scoring (no prefix): the mean next-token CE over every window
        ce = [F.cross_entropy(st.model(x).detach().flatten(0, 1), y.flatten(), reduction="sum") for x, y in val]
        want = float(sum(ce)) / sum(y.numel() for _, y in val) / math.log(2) / 2.5
        assert causal_bpb(st.model, val, 2.5) == pytest.approx(want, rel=1e-5)


def test_quick_objective_and_architecture_rows(tmp_path):
    import os
    os.environ["OMP_NUM_THREADS"] = "1"
    r = _cli("ablate", "quick=true", "rows=causal LM,prefix LM,UL2,encoder-decoder", f"output_dir={tmp_path}/ab",
             f"corpus_dir={tmp_path}/corpus", "progress=false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = {x["row"]: x for x in map(json.loads, (tmp_path / "ab" / "results.jsonl").read_text().splitlines())}
    assert set(lines) == {"causal LM", "prefix LM", "UL2", "encoder-decoder"}
    assert [lines[n]["layout"] for n in ("causal LM", "prefix LM", "UL2", "encoder-decoder")] == \
        ["causal", "prefix", "prefix", "seq2seq"]
    assert lines["encoder-decoder"]["val_bpb"] is None  # no causal score for an encoder-decoder
    assert all(lines[n]["val_bpb"] > 0 for n in ("causal LM", "prefix LM", "UL2"))
    assert all(0 < x["infill_loss"] < 20 and 0 < x["infill_span_loss"] < 20 and x["steps"] >= 1 for x in lines.values())
    table = (tmp_path / "ab" / "table.md").read_text()
    assert "| architecture | encoder-decoder | n/a (no causal score) |" in table
    assert "| architecture | decoder-only |" not in table  # not selected
    assert (tmp_path / "ab" / "infill.png").stat().st_size > 1000


_KILLED_RUN = """
import dataclasses, json, sys
from pathlib import Path
from llmlab.ablate.corpus import prepare_corpus
from llmlab.ablate.grid import AblateConfig, train_one
from llmlab.ablate.rows import ROWS
from llmlab.tokenizer.bpe import load_tokenizer
cfg = AblateConfig(**json.loads(sys.argv[1]))
corpus = prepare_corpus(cfg.corpus_dir, cfg.max_docs, cfg.vocab_size, progress=False)
row = dataclasses.replace(ROWS["pre-norm"], train={"debug_kill_at_step": int(sys.argv[2])})
train_one(cfg, row, 0, corpus, load_tokenizer(corpus["tokenizer"]), Path(cfg.output_dir) / "runs" / "reference-seed0")
"""


@pytest.mark.slow  # three subprocesses on a tiny grid row: ~1 min on a loaded 2-core box
def test_grid_run_killed_after_a_checkpoint_resumes_to_the_same_result(tmp_path):
    """A grid run SIGKILLed between checkpoints (as the session-12 full grid's worker B was) and resumed by a
    rerun of `llmlab ablate` ends with the same held-out bpb, to the bit, as an uninterrupted run."""
    import os
    import signal
    os.environ["OMP_NUM_THREADS"] = "1"
    kw = dict(max_docs=300, vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, context=32,
              batch_size=4, max_steps=40, save_steps=10, seeds=[0], corpus_dir=str(tmp_path / "corpus"),
              progress=False)
    args = [f"{k}={v}" for k, v in kw.items() if k != "seeds"] + ["rows=pre-norm", "seeds=[0]"]

    def results(name):
        return [json.loads(x) for x in (tmp_path / name / "results.jsonl").read_text().splitlines()]
    assert _cli("ablate", *args, f"output_dir={tmp_path}/full", cwd=tmp_path).returncode == 0
    killed = subprocess.run([sys.executable, "-c", _KILLED_RUN, json.dumps({**kw, "output_dir": str(tmp_path / "cut")}),
                             "25"], capture_output=True, text=True, cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = tmp_path / "cut" / "runs" / "reference-seed0"
    assert sorted(d.name for d in run_dir.glob("checkpoint-*")) == ["checkpoint-20"]
    assert not (tmp_path / "cut" / "results.jsonl").exists()
    r = _cli("ablate", *args, f"output_dir={tmp_path}/cut", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (full,), (cut,) = results("full"), results("cut")
    assert cut["steps"] == full["steps"] == 40
    for k in ("val_bpb", "val_loss", "train_loss"):
        assert cut[k] == full[k], (k, cut[k], full[k])


def test_ablation_time_measured_reads_a_grid_that_ran(tmp_path):
    """benchmarks/ablation_time.py --measured: the table of the runs in a results.jsonl and summed CPU s / cores;
    lines of another budget (signature) are left out."""
    from pathlib import Path
    (tmp_path / "g.yaml").write_text("max_steps: 7\nseeds: [0, 1]\n")
    sig = AblateConfig(max_steps=7, seeds=[0, 1]).signature()
    lines = [{"row": "pre-norm", "group": "norm placement", "key": "reference", "seed": s, "signature": g,
              "val_bpb": v, "steps": 7, "params": 10, "seconds": 1, "cpu_seconds": 3600.0, "wall_seconds": 5000.0}
             for s, g, v in [(0, sig, 2.0), (1, sig, 2.2), (0, "other", 9.0)]]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ablation_time.py"
    p = subprocess.run([sys.executable, str(script), "--measured", str(tmp_path / "results.jsonl"), "--config",
                        str(tmp_path / "g.yaml")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "| norm placement | pre-norm | 2.1000 ± 0.1414 |" in p.stdout and "| mlp | GeLU | not run yet |" in p.stdout
    last = json.loads(p.stdout.strip().splitlines()[-1])
    assert last["ours"]["runs"] == 2 and last["ours"]["measured_hours"] == 1.0
    assert last["ratio"]["goal_over_measured"] == 3.0 and last["ours"]["wall_seconds_summed"] == 10000.0
