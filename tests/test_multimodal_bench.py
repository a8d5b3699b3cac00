"""benchmarks/multimodal.py's summary statistics and per-seed files (no training here)."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_multimodal", ROOT / "benchmarks" / "multimodal.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("bench_multimodal", None)


def _rows(ours_acc, peer_acc, ours_s=(100.0, 110.0, 90.0), peer_s=(100.0, 100.0, 100.0)):
    side = lambda accs, speeds: [{"clip_img_s": s, "clip_zero_shot": a, "final_loss": 2.0} for a, s in zip(accs, speeds)]
    return {"ours": side(ours_acc, ours_s), "peer": side(peer_acc, peer_s)}


def test_parse_seeds(bench):
    assert bench.parse_seeds("0,1,2") == [0, 1, 2]
    assert bench.parse_seeds("0-3,9") == [0, 1, 2, 3, 9]
    assert bench.parse_seeds("5") == [5]


def test_ratio_of_means_and_its_se_by_hand(bench):
    ours, peer = [0.6, 0.8, 0.7], [0.8, 0.7, 0.9]
    r, se = bench.ratio_of_means_se(ours, peer)
    assert r == pytest.approx(2.1 / 2.4)
    resid = [o - r * p for o, p in zip(ours, peer)]
    assert se == pytest.approx(statistics.stdev(resid) / (math.sqrt(3) * 0.8))
    assert math.isnan(bench.ratio_of_means_se([0.5], [0.6])[1])


def test_summary_reads_zero_shot_as_ratio_of_means_and_speed_as_median(bench):
    s = bench.summarise(_rows([0.6, 0.8, 0.7], [0.8, 0.7, 0.9]))
    assert s["ratio"]["clip_zero_shot"] == round(2.1 / 2.4, 4)  # not the median per-seed ratio (0.875 vs 0.7778)
    assert s["ratio_median_per_seed"]["clip_zero_shot"] == round(statistics.median([0.75, 0.8 / 0.7, 0.7 / 0.9]), 4)
    assert s["ratio"]["clip_img_s"] == 1.0  # median of 1.0, 1.1, 0.9
    assert s["ratio_of_means"]["clip_img_s"] == 1.0
    assert s["ours"]["clip_zero_shot"] == 0.7 and s["peer"]["clip_zero_shot"] == 0.8  # medians
    assert s["zero_shot_se"] > 0
    # identical sides: ratio exactly 1 with zero standard error
    same = bench.summarise(_rows([0.6, 0.8, 0.7], [0.6, 0.8, 0.7]))
    assert same["ratio"]["clip_zero_shot"] == 1.0 and same["zero_shot_se"] == 0.0


def test_per_seed_file_is_written_then_reused(bench, tmp_path, monkeypatch):
    calls = []

    def fake_run(open_clip, seed, steps, batch, chunk, same_init=False):
        calls.append(seed)
        return {"clip_zero_shot": 0.5 + seed / 100}, {"clip_zero_shot": 0.6}

    monkeypatch.setattr(bench, "run_seed", fake_run)
    args = SimpleNamespace(per_seed_dir=str(tmp_path / "d"), same_init=False)
    first = bench.seed_rows(None, 3, args, 300, 64)
    saved = json.loads((tmp_path / "d" / "seed_3.json").read_text())
    assert saved["seed"] == 3 and saved["ours"] == first[0] and saved["config"]["steps"] == 300
    assert bench.seed_rows(None, 3, args, 300, 64) == first and calls == [3]  # reused, not rerun
    with pytest.raises(SystemExit, match="seed_3.json was run with"):
        bench.seed_rows(None, 3, args, 600, 64)  # another protocol's file is refused, not mixed in


def test_markdown_table_has_one_row_per_seed(bench):
    t = bench.markdown_table([0, 7, 9], _rows([0.6, 0.8, 0.7], [0.8, 0.7, 0.9])).splitlines()
    assert len(t) == 5 and t[0].startswith("| seed |")
    assert t[3] == "| 7 | 0.800 / 0.700 | 1.143 | 2.000 / 2.000 | 1.100 |"


@pytest.fixture()
def init_bench():
    """benchmarks/multimodal_init.py as a module; sys.path and sys.modules restored after (benchmarks/
    must not stay on the path: its peft.py would shadow the package)."""
    saved_path, saved_mods = list(sys.path), set(sys.modules)
    spec = importlib.util.spec_from_file_location("bench_multimodal_init", ROOT / "benchmarks" / "multimodal_init.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    sys.path[:] = saved_path
    for name in set(sys.modules) - saved_mods:
        if name in ("multimodal", "bench_multimodal_init"):
            sys.modules.pop(name)


def test_arms_skip_decay_where_open_clip_does(init_bench):
    """The validation arms' weight-decay groups against open_clip's own rules on its own model (the
    benchmark's config, names matched through the weights `open_clip_to_ours` maps): `ours` decays what
    has >= 2 dims; `cls_no_decay` what open_clip_train/main.py's exclude lambda decays (up to 3.3);
    `open_clip_no_decay` what its current rule decays (1-D tensors and `no_weight_decay()` skip)."""
    from llmlab.multimodal.reference import import_references, open_clip_to_ours
    from llmlab.multimodal.train import build_model, param_groups
    _timm, open_clip = import_references()
    cfg, _train, _val = init_bench.bench_config(0, 10, 8, validation=init_bench.VALIDATION)
    ours, peer = build_model(cfg), bench_peer(open_clip)
    mapped = open_clip_to_ours(dict(peer.named_parameters()), 2)  # our name -> a view of open_clip's tensor
    theirs = {id(p): n for n, p in peer.named_parameters()}
    ptr = {p.data_ptr(): theirs[id(p)] for p in peer.parameters()}
    name_of = {ours_name: ptr[t.data_ptr()] for ours_name, t in mapped.items()}  # our name -> open_clip's
    legacy = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    current = lambda n, p: p.ndim <= 1 or n in peer.no_weight_decay()  # noqa: E731
    assert peer.no_weight_decay() >= {"positional_embedding", "visual.positional_embedding", "visual.class_embedding"}
    peer_params = dict(peer.named_parameters())
    for arm, rule in (("cls_no_decay", legacy), ("open_clip_no_decay", current)):
        decayed = {id(p) for p in param_groups(ours, 0.05, no_decay=init_bench.ARMS[arm][0])[0]["params"]}
        mine = {n for n, p in ours.named_parameters() if id(p) in decayed}
        assert {name_of[n] for n in mine} == {n for n, p in peer_params.items() if not rule(n, p)}, arm
    default = {id(p) for p in param_groups(ours, 0.05)[0]["params"]}
    assert {n for n, p in ours.named_parameters() if id(p) in default} == \
        {n for n, p in ours.named_parameters() if p.dim() >= 2} >= set(init_bench.ARMS["open_clip_no_decay"][0])
    assert "visual.cls_token" in name_of and name_of["visual.cls_token"] == "visual.class_embedding"


def test_position_arms_change_only_the_text_position_table(init_bench):
    """Session 16's arms: open_clip's N(0, 0.01) draw (the control then), zeros, or the sin-cos table
    at std 0.01 / 0.02 (ours since session 16); every other tensor as our build's."""
    from llmlab.multimodal.clip import text_positions
    from llmlab.multimodal.train import build_model
    cfg, _train, _val = init_bench.bench_config(0, 10, 8, validation=init_bench.VALIDATION)
    control = build_model(cfg).state_dict()
    assert torch.equal(control["text.positional_embedding"], text_positions(48, 64, std=0.02))
    for arm in ("open_clip_positions", "tpos_zero", "tpos_sincos", "tpos_sincos2"):
        no_decay, init, *build_in = init_bench.ARMS[arm]
        with (build_in[0]() if build_in else contextlib.nullcontext()):
            model = build_model(cfg)
        if init is not None:
            init(model)
        sd = model.state_dict()
        pe = sd["text.positional_embedding"]
        expect = {"tpos_zero": torch.zeros(48, 64), "tpos_sincos": text_positions(48, 64, std=0.01),
                  "tpos_sincos2": control["text.positional_embedding"]}.get(arm)
        if expect is None:  # a draw: N(0, 0.01), uncorrelated across positions
            assert abs(float(pe.std()) - 0.01) < 1e-3 and abs(float(torch.corrcoef(pe[:2])[0, 1])) < 0.5
        else:
            assert torch.equal(pe, expect), arm
        assert all(torch.equal(v, control[k]) for k, v in sd.items() if k != "text.positional_embedding"), arm


def test_init_summary_by_hand(init_bench):
    rows = [{"ours": {"val_zero_shot": o}, "cls_no_decay": {"val_zero_shot": c}} for o, c in ((0.5, 0.6), (0.7, 0.6))]
    s = init_bench.summarise(rows, ["ours", "cls_no_decay"])
    assert s["means"] == {"ours": 0.6, "cls_no_decay": 0.6} and s["diff"] == {"cls_no_decay": 0.0}
    assert s["diff_se"] == {"cls_no_decay": 0.1} and s["ahead"] == {"cls_no_decay": 1}
    assert s["peer_arm"] == "cls_no_decay" and s["ratio"] == {"val_zero_shot": 1.0}


def bench_peer(open_clip):
    spec = importlib.util.spec_from_file_location("bench_multimodal_peer", ROOT / "benchmarks" / "multimodal.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.peer_model(open_clip, 0)


def test_validation_split_is_the_last_training_digits(init_bench):
    cfg, train, val = init_bench.bench_config(0, 10, 8, validation=257)
    _, full, test = init_bench.bench_config(0, 10, 8)
    assert len(val.images) == 257 and len(train.images) + 257 == len(full.images)
    assert torch.equal(val.images, full.images[-257:]) and torch.equal(train.images, full.images[:-257])
    assert len(full.images) + len(test.images) == 1797  # the validation digits come from train only


def test_bootstrap_interval_and_paired_differences_by_hand(bench):
    assert bench.bootstrap_ratio([0.5, 0.5, 0.5], [1.0, 1.0, 1.0], draws=50) == (0.5, 0.5)
    lo, hi = bench.bootstrap_ratio([0.6, 0.8, 0.7, 0.9], [0.8, 0.7, 0.9, 0.6], draws=2000)
    assert lo < 3.0 / 3.0 < hi and lo >= 0.6 / 0.9 and hi <= 0.9 / 0.6
    assert bench.bootstrap_ratio([0.6, 0.8], [0.7, 0.9], draws=200, seed=3) == \
        bench.bootstrap_ratio([0.6, 0.8], [0.7, 0.9], draws=200, seed=3)  # seeded
    new, old = _rows([0.7, 0.8, 0.7], [0.8, 0.7, 0.9]), _rows([0.6, 0.8, 0.8], [0.8, 0.7, 0.9])
    got = bench.paired_against(new, old)
    assert got["peer"] == {"mean_diff": 0.0, "diff_se": 0.0, "same": 3, "ahead": 0}
    assert got["ours"]["mean_diff"] == 0.0 and got["ours"]["same"] == 1 and got["ours"]["ahead"] == 1
    assert got["ours"]["diff_se"] == round(statistics.stdev([0.1, 0.0, -0.1]) / math.sqrt(3), 4)
    assert "zero_shot_boot95" in bench.summarise(new)
