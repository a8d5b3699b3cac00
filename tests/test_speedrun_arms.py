"""benchmarks/sft_arms.py (issue 24's SFT experiments): with no override it trains exactly the
speedrun's SFT stage; overrides are typed and checked; the reading / facts split is computed as
defined (judge.arithmetic_breakdown)."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

import llmlab.finetune.sft as S
from llmlab.errors import UserError
from llmlab.finetune.instruct import templated as T
from llmlab.speedrun.judge import arithmetic_breakdown, arithmetic_wording
from llmlab.speedrun.pipeline import SpeedrunConfig, _sft

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("sft_arms", ROOT / "benchmarks" / "sft_arms.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _base(tmp_path: Path) -> Path:
    base = tmp_path / "base"
    (base / "train" / "model").mkdir(parents=True)
    (base / "train" / "model" / "config.json").write_text('{"max_position_embeddings": 128}')
    (base / "data").mkdir()
    (base / "data" / "val.jsonl").write_text(json.dumps({"text": "A validation document."}) + "\n")
    return base


def _capture(monkeypatch):
    seen = []

    def capture(cfg, **kw):
        seen.append(cfg)
        raise RuntimeError("captured")

    monkeypatch.setattr(S, "sft", capture)
    return seen


def _comparable(cfg) -> dict:
    d = dataclasses.asdict(cfg)
    data = Path(d.pop("datasets")[0]).read_text(encoding="utf-8")
    return {**{k: v for k, v in d.items() if k not in ("model", "output_dir")}, "data": data}


@pytest.mark.parametrize("seed", [0, 3])
def test_default_arm_is_the_speedruns_sft(tmp_path, monkeypatch, seed):
    tool, base = _tool(), _base(tmp_path)
    seen = _capture(monkeypatch)
    val = ["A validation document."]
    with pytest.raises(RuntimeError, match="captured"):
        _sft(SpeedrunConfig(seed=seed), base, {"sft": {}}, val)  # what `llmlab speedrun seed=N` trains
    with pytest.raises(RuntimeError, match="captured"):
        tool.run_arm(base, tmp_path / "arm", tool.arm_config(seed, []))
    speedrun, arm = seen
    assert (arm.max_steps, arm.learning_rate, arm.seed, arm.per_device_train_batch_size) == (1600, 3e-3, seed, 8)
    assert _comparable(arm) == _comparable(speedrun)  # every setting and the same 24,000 examples
    assert (tmp_path / "arm" / "train" / "model").resolve() == (base / "train" / "model").resolve()
    assert S.speedrun_sft_config.__module__ == "llmlab.finetune.sft"  # the tool's wrapper is gone again


def test_overrides_are_typed_and_checked(tmp_path, monkeypatch):
    tool = _tool()
    cfg = tool.arm_config(2, ["sft_stories=more", "sft_steps=10", "sft_hard_share=0.25", "judge=false"])
    assert (cfg.seed, cfg.sft_stories, cfg.sft_steps, cfg.sft_hard_share, cfg.judge) == (2, "more", 10, 0.25, False)
    for bad in ("sft_stories=most", "nope=1", "seed=3", "sft_steps"):
        with pytest.raises(UserError):
            tool.arm_config(0, [bad])
    seen = _capture(monkeypatch)
    with pytest.raises(RuntimeError, match="captured"):
        tool.run_arm(_base(tmp_path), tmp_path / "arm", cfg, lr=1.5e-3)
    assert seen[0].learning_rate == 1.5e-3 and seen[0].max_steps == 10
    recs = [json.loads(x) for x in Path(seen[0].datasets[0]).read_text(encoding="utf-8").splitlines()]
    assert recs == T.build(cfg.sft_examples, seed=2, exclude_text="A validation document.", hard_share=0.25,
                           stories="more")


def test_arithmetic_breakdown_by_hand():
    t = {"+": ["Add {a} and {b}?"], "-": ["Take {b} from {a}?"]}
    items = [{"kind": "arithmetic", "prompt": p, "answer": ans} for p, ans in
             (("Add 7 and 5?", 12), ("Add 3 and 4?", 7), ("Take 2 from 9?", 7), ("Take 3 from 8?", 5),
              ("Take 1 from 6?", 5))]
    replies = ["7 + 5 = 11.",  # read right, fact wrong
               "4 + 3 = 7.",  # either order for +
               "2 - 9 = -7.",  # reversed operands of a -: misread, the fact itself right
               "8 × 3 = 24.",  # wrong operation
               "It is 5."]  # right answer, no equation
    r = arithmetic_breakdown(items, replies, t)
    assert r["score"] == pytest.approx(2 / 5) and r["equations"] == 4
    assert r["reading"] == pytest.approx(2 / 5) and r["facts"] == pytest.approx(3 / 4)
    assert r["by_wording"] == {"Add {a} and {b}?": 0.5, "Take {b} from {a}?": pytest.approx(1 / 3)}
    assert arithmetic_wording("Take 3 from 8?", t) == ("-", "Take {b} from {a}?", 8, 3)
    assert arithmetic_wording("Take three from 8?", t) is None


def test_every_validation_question_has_a_wording():
    items = T.validation_items()
    found = [arithmetic_wording(it["prompt"], T.VALID_ARITH_EN) for it in items]
    assert all(found)
    assert all(it["answer"] == (a + b if op == "+" else a - b) for it, (op, _, a, b) in zip(items, found))
