"""benchmarks/quant_methods.py: awq_vs_rtn reads AWQ's chosen row (awq4), and --calib-draws scores a
calibrated row on each draw (the key row's perplexity is their mean)."""
import copy

import pytest
import torch

from llmlab.quant import calibrate
from llmlab.quant.apply import quantize_model
from test_quant_blocks import _bench


def test_awq_vs_rtn_reads_the_chosen_arm():
    qm = _bench("quant_methods")
    ours = {"fp32": 10.0, "rtn4": 16.0, "gptq4": 12.0, "awq4": 13.0, "awq4m": 11.0, "sq": 10.5}
    r = qm.ratios(ours, 10.0, 128, 4)
    assert r["awq_vs_rtn"] == pytest.approx(2.0) and r["gptq_vs_rtn"] == pytest.approx(3.0)
    assert r["awq4m_vs_rtn"] == pytest.approx(6.0) and r["int8_ppl"] == pytest.approx(10 / 10.5)
    assert qm.ratios({**ours, "awq4": 9.0}, 10.0, 128, 4)["awq_vs_rtn"] is None  # no increase: null
    assert "awq4" in qm.QUICK  # the smoke run prints the goal key


def test_score_row_over_draws_is_each_draws_row_and_saves_each(tiny, tmp_path, monkeypatch):
    qm = _bench("quant_methods")
    monkeypatch.setattr("sys.argv", ["quant_methods.py", "--calib-draws", "0,2", "--calib-windows", "2",
                                     "--group", "32", "--length", "16", "--save-dir", str(tmp_path)])
    a = qm.parse_args()
    a.n_cal = 2
    assert a.draws == [0, 2]
    torch.manual_seed(0)
    cals = {d: torch.randint(0, 97, (2, 16)) for d in a.draws}
    ev = torch.randint(0, 97, (2, 16))
    lins = list(calibrate.quantizable_linears(tiny))
    awq = next(r for r in qm.rows(32) if r[0] == "awq4")
    ppls, info, _ = qm.score_row(a, tiny, awq, cals, ev, lins, None, alone=True)
    want = []
    for d in a.draws:
        m = copy.deepcopy(tiny)
        quantize_model(m, "awq", bits=4, group=32, sym=False, calib=cals[d], ragged_groups=True)
        want.append(calibrate.perplexity(m, ev).perplexity)
    assert ppls == pytest.approx(want, rel=1e-6) and ppls[0] != ppls[1]
    assert qm.weights_file(a, "awq4", 1, 0).exists() and qm.weights_file(a, "awq4", 1, 2).name.endswith(".d2.safetensors")
    a.load_dir, a.save_dir = str(tmp_path), ""
    assert qm.score_row(a, tiny, awq, {}, ev, lins, None, alone=True)[0] == pytest.approx(ppls, rel=1e-6)  # loaded
    rtn = next(r for r in qm.rows(32) if r[0] == "rtn4")
    assert len(qm.score_row(a, tiny, rtn, cals, ev, lins, None, alone=True)[0]) == 1  # no calibration: one figure
    monkeypatch.setattr("sys.argv", ["quant_methods.py", "--calib-draws", "1,1"])
    with pytest.raises(SystemExit, match="distinct"):
        qm.parse_args()


def test_calib_on_val_is_the_scored_windows_and_only_on_validation(tmp_path, monkeypatch):
    qm = _bench("quant_methods")
    ev = torch.arange(3 * 4).view(3, 4)
    cal = qm.on_scored(ev, 7)
    assert torch.equal(cal, torch.cat([ev, ev, ev[:1]])) and torch.equal(qm.on_scored(ev, 2), ev[:2])
    monkeypatch.setattr("sys.argv", ["quant_methods.py", "--score", "val", "--calib-on-val", "--save-dir", str(tmp_path)])
    a = qm.parse_args()
    assert qm.weights_file(a, "awq4").name.endswith(".c32x256.calval.safetensors")  # never a draw's saved row
    for bad in (["--calib-on-val"], ["--score", "val", "--calib-on-val", "--calib-draw", "1"]):
        monkeypatch.setattr("sys.argv", ["quant_methods.py", *bad])
        with pytest.raises(SystemExit, match="calib-on-val"):
            qm.parse_args()
    assert dict((k, kw) for k, _, _, kw in qm.rows(128))["awq4_a0"]["awq_grid"] == 1  # alpha 0 only: s = 1
