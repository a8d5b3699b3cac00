"""benchmarks/multimodal.py's summary statistics and per-seed files (no training here)."""
from __future__ import annotations

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


def test_open_clip_biases_draws_the_two_bias_sets_as_open_clip_does(init_bench):
    from llmlab.multimodal.reference import import_references
    from llmlab.multimodal.train import build_model
    _timm, open_clip = import_references()
    cfg, _train, _val = init_bench.bench_config(0, 10, 8, validation=init_bench.VALIDATION)
    ours = build_model(cfg)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    init_bench.open_clip_biases(ours)
    changed = {k for k, v in ours.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"text.blocks.{i}.mlp.fc{j}.bias" for i in range(2) for j in (1, 2)} | \
        {f"visual.blocks.{i}.attn.proj.bias" for i in range(2)}
    peer = bench_peer(open_clip)
    for i in range(2):
        pv, ov = peer.visual.transformer.resblocks[i], ours.visual.blocks[i]
        assert not pv.attn.out_proj.bias.any() and not ov.attn.proj.bias.any()  # zero on both sides
        pt, ot = peer.transformer.resblocks[i], ours.text.blocks[i]
        for theirs, mine in ((pt.mlp.c_fc, ot.mlp.fc1), (pt.mlp.c_proj, ot.mlp.fc2)):
            bound = mine.in_features ** -0.5
            assert theirs.in_features == mine.in_features  # the same U(-bound, bound)
            for b in (theirs.bias, mine.bias):
                assert b.abs().max() <= bound and b.abs().max() > bound / 2 and b.std() > bound / 4


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
