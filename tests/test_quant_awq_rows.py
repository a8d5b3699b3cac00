"""AWQ's searches on all calibration tokens through h = x^T x / n (`awq_rows="all"`) equal the
same searches run on all the rows themselves."""
import copy

import pytest
import torch

from llmlab.errors import UserError
from llmlab.quant.apply import quantize_model
from llmlab.quant.awq import awq_group, linear_loss, rtn_fq, search_clip, search_scale
from tiny_quant import tiny_quant_case


def _case(n=300, k=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g) * torch.linspace(0.1, 4, k)
    ws = [torch.randn(24, k, generator=g) * 0.05, torch.randn(16, k, generator=g) * 0.05]
    ws[0][:, 5] *= 8
    return x, ws, (x.double().t() @ x.double() / n)


def test_linear_loss_equals_the_mean_squared_output_error_on_the_rows():
    x, ws, h = _case()
    cand = [rtn_fq(w, 4, 32, False) for w in ws]
    ref = sum(float(((x @ c.t() - x @ w.t()) ** 2).mean()) for c, w in zip(cand, ws))
    assert linear_loss(ws, h)(cand) == pytest.approx(ref, rel=1e-4)


def test_scale_and_clip_searches_through_h_equal_the_searches_on_every_row():
    x, ws, h = _case()
    mean_abs = x.abs().mean(0)
    s_rows, a_rows = search_scale(ws, x, mean_abs, 4, 32, False)  # all 300 rows as the sample
    s_h, a_h = search_scale(ws, x[:7], mean_abs, 4, 32, False, h=h)  # the 7 rows are not used
    assert a_h == a_rows and torch.equal(s_h, s_rows)
    got = search_clip(ws[0], x[:7], 4, 32, False, h=h)  # ragged last group: 80 = 32 + 32 + 16
    ref = search_clip(ws[0], x, 4, 32, False, n_rows=x.shape[0])
    assert torch.allclose(got, ref, atol=1e-7) and not torch.equal(ref, ws[0])
    new_h, _ = awq_group(ws, ["gate_proj", "up_proj"], x[:7], mean_abs, 4, 32, False, h=h)
    new_r, _ = awq_group(ws, ["gate_proj", "up_proj"], x, mean_abs, 4, 32, False)  # 300 rows < 512: all of them
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(new_h, new_r))


def test_quantize_model_awq_rows(tiny_config):
    model, calib, ids, _ = tiny_quant_case(tiny_config)
    out = {}
    for rows in ("sample", "all"):
        m = copy.deepcopy(model)
        quantize_model(m, "awq", group=32, calib=calib, awq_rows=rows, max_rows=8)
        out[rows] = m(ids).detach()
    assert torch.isfinite(out["all"]).all() and not torch.equal(out["sample"], out["all"])
    with pytest.raises(UserError, match="awq_rows"):
        quantize_model(copy.deepcopy(model), "awq", group=32, calib=calib, awq_rows="every")


def test_uniform_sample_rows_are_the_drawn_token_indices(tiny_config):
    """layerwise(sample="uniform"): block 0's q/k/v sample rows are exactly its inputs at the seeded
    token indices, spread over window positions; "strided" with a stride dividing the window length
    takes the same positions of every window (why awq4_c8's rows were half position 0)."""
    from llmlab.quant import calibrate
    model, _, _, _ = tiny_quant_case(tiny_config)
    calib = torch.randint(0, tiny_config.vocab_size, (16, 32), generator=torch.Generator().manual_seed(1))
    got = {}

    def keep(names, stats, ctx):
        if "model.layers.0.self_attn.q_proj" in names:
            got["x"] = torch.cat(ctx[1]).reshape(-1, ctx[1][0].shape[-1])  # block 0's inputs, all tokens
            got["sample"] = stats["model.layers.0.self_attn.q_proj"].sample
    for sample, max_rows in (("uniform", 40), ("strided", 32)):
        calibrate.layerwise(model, calib, {"sample"}, keep, max_rows=max_rows, sample=sample)
        x = model.model.layers[0].input_layernorm(got["x"])
        if sample == "uniform":
            at = torch.randperm(calib.numel(), generator=torch.Generator().manual_seed(0))[:max_rows].sort().values
            assert got["sample"].shape[0] == max_rows and torch.allclose(got["sample"], x[at])
            assert len(set((at % 32).tolist())) > 20  # many window positions
        else:  # stride 512 // 32 = 16 in 32-token windows: positions 0 and 16 only
            assert torch.allclose(got["sample"], x[::16][:max_rows])
    m = copy.deepcopy(model)
    quantize_model(m, "awq", group=32, calib=calib, awq_sample="uniform", max_rows=64)
    assert torch.isfinite(m(calib[:2])).all()
    with pytest.raises(UserError, match="awq_sample"):
        quantize_model(copy.deepcopy(model), "awq", group=32, calib=calib, awq_sample="random")


@pytest.mark.parametrize("n_windows,length", [(32, 256), (128, 256), (256, 256), (10, 64)])
def test_awq_positions_benchmark_counts_the_rows_stats_keeps(n_windows, length):
    """benchmarks/awq_positions.py's index arithmetic equals the rows `calibrate.Stats` keeps when fed
    4-window batches the way `layerwise` feeds them (each row holding its own token index)."""
    import importlib.util
    from pathlib import Path

    from llmlab.quant.calibrate import Stats
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "awq_positions.py"
    spec = importlib.util.spec_from_file_location("awq_positions", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    idx = torch.arange(n_windows * length, dtype=torch.float32).reshape(n_windows, length, 1)
    st = Stats(1, {"sample"}, 512, stride=max(1, idx.numel() // 512))
    for b in idx.split(4):
        st.add(b)
    kept = (st.sample[:, 0].long() % length).tolist()
    assert kept == bench.sample_positions(n_windows, length)
