"""GPTQ's clip search and dampening, AWQ scales + GPTQ, validation windows, spread AWQ sample rows."""
import copy

import pytest
import torch

from llmlab.errors import UserError
from llmlab.quant import calibrate, gptq
from llmlab.quant.apply import quantize_model
from llmlab.quant.ptq import fake_quant, qparams, rtn
from tiny_quant import outlier_inputs, tiny_quant_case


def test_clip_qparams_picks_the_least_weighted_error_by_hand():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(40, 64, generator=g, dtype=torch.float64) * 0.05
    w[:, 7] *= 6  # a heavy-tailed weight: clipping pays off on most rows
    h = gptq.hessian(outlier_inputs(512, 64, seed=1))
    for sym in (False, True):
        s, z = gptq.clip_qparams(w, h, 4, sym)
        got = fake_quant(w, s, z, 4, sym)
        for r in range(40):  # each row: every candidate ratio written out, the least error kept
            errs = []
            for i in range(10):
                ratio = 1 - i / 20
                lo, hi = min(float(w[r].min()), 0.0) * ratio, max(float(w[r].max()), 0.0) * ratio
                if sym:
                    sc = max(-lo, hi) / 7
                    q = torch.clamp(torch.round(w[r] / sc), -7, 7) * sc
                else:
                    sc = (hi - lo) / 15
                    zp = round(-lo / sc)
                    q = (torch.clamp(torch.round(w[r] / sc) + zp, 0, 15) - zp) * sc
                d = q - w[r]
                errs.append((float(d @ h @ d), q))
            best = min(errs, key=lambda e: e[0])
            assert torch.allclose(got[r], best[1], atol=1e-12), (sym, r)
        unclipped = fake_quant(w, *qparams(w, 4, sym), 4, sym)
        assert gptq.layer_error(w, got, h) < gptq.layer_error(w, unclipped, h)


@pytest.mark.parametrize("group", [128, -1])
def test_gptq_with_clip_stays_below_rtn_and_on_the_grid(group):
    x, w = outlier_inputs(1024), torch.randn(96, 256, generator=torch.Generator().manual_seed(1)) * 0.05
    h = gptq.hessian(x)
    q = gptq.gptq(w, h, group=group, clip=True)
    r = rtn(w, 4, group if group > 0 else "channel", sym=False)
    assert gptq.layer_error(w, q, h) < 0.7 * gptq.layer_error(w, r, h)
    assert len(torch.unique(q[0, : group if group > 0 else 256])) <= 16
    with pytest.raises(UserError, match="act_order"):
        gptq.gptq(w, h, group=128, clip=True, act_order=False)


def test_more_dampening_moves_gptq_towards_rtn():
    """percdamp -> infinity makes H^-1 diagonal, so no error is spread and GPTQ is RTN with its grid."""
    x, w = outlier_inputs(1024), torch.randn(32, 256, generator=torch.Generator().manual_seed(2)) * 0.05
    h = gptq.hessian(x)
    e = [gptq.layer_error(w, gptq.gptq(w, h, group=128, percdamp=d), h) for d in (0.01, 0.1, 1e6)]
    assert e[0] < e[2] and e[1] < e[2]
    assert torch.allclose(gptq.gptq(w, h, group=128, percdamp=1e6), rtn(w, 4, 128, sym=False), atol=1e-6)


def test_scaled_hessian_is_the_hessian_of_scaled_inputs():
    x = outlier_inputs(256, 64).double()
    s = torch.rand(64, dtype=torch.float64) + 0.5
    assert torch.allclose(gptq.scaled_hessian(gptq.hessian(x), s), gptq.hessian(x / s), rtol=1e-9, atol=1e-9)


def test_awq_gptq_and_new_options_end_to_end(tiny_config):
    model, calib, ids, ref = tiny_quant_case(tiny_config)
    for kw in (dict(method="awq_gptq", clip=True), dict(method="awq_gptq", awq_objective="module"),
               dict(method="gptq", clip=True, percdamp=0.1), dict(method="awq", max_rows=64)):
        m = copy.deepcopy(model)
        info = quantize_model(m, bits=4, group=32, calib=calib, **kw)
        assert 0 < float((m(ids).detach() - ref).abs().max()) < 1.0, kw
        assert ("alpha_mean" in info) == kw["method"].startswith("awq")
    with pytest.raises(UserError, match="percdamp"):
        quantize_model(copy.deepcopy(model), "gptq", group=32, calib=calib, percdamp=0)
    with pytest.raises(UserError, match="calibration"):
        quantize_model(copy.deepcopy(model), "awq_gptq", group=32, calib=None)
    with pytest.raises(UserError, match="act_order"):
        quantize_model(copy.deepcopy(model), "gptq", group=32, calib=calib, clip=True, act_order=False)


class _CharTok:
    eos_id = None

    def encode(self, t):
        return [ord(c) for c in t]


def test_validation_windows_share_no_document_with_calibration():
    texts = [chr(0x4E00 + i) * (30 + i % 7) for i in range(200)]  # one distinct character per document
    tok = _CharTok()
    vals = []
    for n_cal in (1, 5, 20):
        cal = calibrate.token_windows(tok, texts, n_cal, 64, seed=1)
        val = calibrate.validation_windows(tok, texts, 10, 64, n_cal, 64, seed=1)
        assert val.shape == (10, 64)
        assert not set(cal.flatten().tolist()) & set(val.flatten().tolist())
        vals.append(val)
    # benchmarks/quant_methods.py's awq4m_c4 / _c8 rows: more calibration windows continue the same
    # document order (the fewer windows are their first ones) and leave the validation windows as they are
    assert torch.equal(calibrate.token_windows(tok, texts, 20, 64, seed=1)[:5], calibrate.token_windows(tok, texts, 5, 64, seed=1))
    assert all(torch.equal(v, vals[0]) for v in vals)
    with pytest.raises(UserError, match="too short"):
        calibrate.validation_windows(tok, texts, 200, 64, 20, 64, seed=1)


def test_calibration_draws_are_disjoint_and_draw_0_is_the_old_windows():
    """benchmarks/quant_methods.py --calib-draw: draw 0 is exactly the windows of earlier sessions;
    draws are consecutive blocks of one token stream (no position in two draws); validation
    windows, cut with calib_n = n * (draw + 1), are the same for every draw and share no document
    with any draw up to it."""
    texts = [chr(0x4E00 + i) * (30 + i % 7) for i in range(200)]
    tok = _CharTok()
    n = 4
    assert torch.equal(calibrate.calibration_draw(tok, texts, n, 64), calibrate.token_windows(tok, texts, n, 64, seed=1))
    draws = [calibrate.calibration_draw(tok, texts, n, 64, d) for d in range(3)]
    assert torch.equal(torch.cat(draws), calibrate.token_windows(tok, texts, 3 * n, 64, seed=1))
    assert not torch.equal(draws[1], draws[0]) and not torch.equal(draws[2], draws[1])
    val0 = calibrate.validation_windows(tok, texts, 10, 64, n, 64, seed=1)
    for d in range(3):
        val = calibrate.validation_windows(tok, texts, 10, 64, n * (d + 1), 64, seed=1)
        assert torch.equal(val, val0)
        for cal in draws[: d + 1]:
            assert not set(cal.flatten().tolist()) & set(val.flatten().tolist())
    with pytest.raises(UserError, match="draw"):
        calibrate.calibration_draw(tok, texts, n, 64, -1)


def test_layerwise_sample_rows_are_spread_over_all_windows(tiny_config):
    from llmlab.model.transformer import Transformer
    model = Transformer(tiny_config).eval()
    calib = torch.randint(0, 97, (8, 16))  # 128 tokens, 16 sample rows: every 8th row of every batch
    seen = {}
    calibrate.layerwise(model, calib, {"sample"}, lambda ns, st, ctx: seen.update(st), max_rows=16, batch_size=2)
    st = seen["model.layers.0.mlp.down_proj"]
    assert st.sample.shape[0] == 16 and len(st.rows) == 4  # 4 rows from each of the 4 batches
