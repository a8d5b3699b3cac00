"""GPTQ, AWQ, SmoothQuant, LLM.int8(): each beats its naive baseline on the error it targets."""
import copy

import pytest
import torch
from torch import nn

from llmlab.errors import UserError
from llmlab.quant import calibrate, gptq
from llmlab.quant.apply import quantize_model
from llmlab.quant.awq import awq_group, rtn_fq
from llmlab.quant.llm_int8 import Int8Linear
from llmlab.quant.ptq import rtn
from llmlab.quant.smoothquant import W8A8Linear, smooth_scales
from tiny_quant import outlier_inputs, tiny_quant_case


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group", [128, 32, -1])
def test_gptq_lowers_layer_error_below_rtn(act_order, group):
    torch.manual_seed(0)
    x, w = outlier_inputs(), torch.randn(96, 256) * 0.05
    h = gptq.hessian(x)
    q = gptq.gptq(w, h, bits=4, group=group, sym=False, act_order=act_order)
    r = rtn(w, 4, group if group > 0 else "channel", sym=False)
    e_g, e_r = gptq.layer_error(w, q, h), gptq.layer_error(w, r, h)
    assert e_g < 0.7 * e_r
    # layer_error is the mean squared output error (up to the factor 2 of H)
    assert abs(e_g - float(((x @ (w - q).t()) ** 2).sum(1).mean()) * 2) / e_g < 1e-4
    # each group's values lie on a 16-level grid (the codes are storable)
    g = group if group > 0 else 256
    assert len(torch.unique(q[0, :g])) <= 16


def test_gptq_bad_group():
    with pytest.raises(UserError, match="does not divide"):
        gptq.gptq(torch.randn(4, 96), torch.eye(96), group=64)


def test_awq_beats_rtn_on_output_error():
    x = outlier_inputs(seed=1)
    ws = [torch.randn(64, 256) * 0.05, torch.randn(64, 256) * 0.05]
    new, alpha = awq_group(ws, ["gate_proj", "up_proj"], x[:512], x.abs().mean(0), 4, 128, False)
    for w, q in zip(ws, new):
        e_awq = float(((x @ (w - q).t()) ** 2).mean())
        e_rtn = float(((x @ (w - rtn_fq(w, 4, 128, False)).t()) ** 2).mean())
        assert e_awq < 0.8 * e_rtn
    assert 0 < alpha < 1


def test_smoothquant_beats_plain_w8a8_with_outliers():
    x = outlier_inputs(seed=2)
    x[:, 7] *= 20  # an outlier channel, as in LLM activations
    lin = nn.Linear(256, 64)
    ref = lin(x)
    plain = W8A8Linear(lin)(x)
    smooth = W8A8Linear(lin, smooth_scales(x.abs().amax(0), [lin.weight], 0.5))(x)
    assert ((smooth - ref) ** 2).mean() < 0.5 * ((plain - ref) ** 2).mean()
    # without quantization the smoothing transform is exact: (x / s) (W s)^T = x W^T
    s = smooth_scales(x.abs().amax(0), [lin.weight], 0.5)
    assert torch.allclose((x / s) @ (lin.weight * s).t(), x @ lin.weight.t(), atol=1e-4)


def test_llm_int8_keeps_outlier_columns_in_float():
    torch.manual_seed(0)
    lin = nn.Linear(64, 16, bias=False)
    x = torch.randn(10, 64)
    x[:, 5] = 40.0
    m = Int8Linear(lin, threshold=6.0)
    y = m(x)
    assert m.last_outliers == 1
    # hand computation: float outlier column + int8 x int8 for the rest
    wq = rtn(lin.weight.detach(), 8, "channel", True)
    reg = x.clone()
    reg[:, 5] = 0
    s = reg.abs().amax(1, keepdim=True) / 127
    expect = (torch.round(reg / s) * s) @ wq.t() + x[:, 5:6] @ wq[:, 5:6].t()
    assert torch.allclose(y, expect, atol=1e-5)
    no_split = Int8Linear(lin, threshold=0)(x)
    assert ((y - lin(x)) ** 2).mean() < 0.1 * ((no_split - lin(x)) ** 2).mean()


def test_quantize_model_end_to_end(tiny_config):
    model, calib, ids, ref = tiny_quant_case(tiny_config)
    for method in ("rtn", "nf4", "gptq", "awq", "w8a8", "smoothquant", "llm_int8"):
        m = copy.deepcopy(model)
        info = quantize_model(m, method, bits=4, group=32, calib=calib)
        out = m(ids).detach()
        assert info["layers"] == 14 and out.shape == ref.shape
        assert 0 < float((out - ref).abs().max()) < 1.0, method
        assert info["stored_bytes"] < 4 * sum(p.numel() for p in model.parameters())
    with pytest.raises(UserError, match="calibration"):
        quantize_model(copy.deepcopy(model), "gptq", group=32, calib=None)
    with pytest.raises(UserError, match="unknown method"):
        quantize_model(copy.deepcopy(model), "zip")
    with pytest.raises(UserError, match="does not divide"):
        quantize_model(copy.deepcopy(model), "rtn", group=24)


def test_collect_shares_stats_between_readers_of_one_input(tiny_config):
    from llmlab.model.transformer import Transformer
    model = Transformer(tiny_config).eval()
    st = calibrate.collect(model, torch.randint(0, 97, (2, 16)), list(calibrate.quantizable_linears(model)),
                           {"hessian"})
    assert st["model.layers.0.self_attn.q_proj"] is st["model.layers.0.self_attn.k_proj"]
    assert st["model.layers.0.mlp.gate_proj"] is st["model.layers.0.mlp.up_proj"]
    assert st["model.layers.0.mlp.down_proj"] is not st["model.layers.0.mlp.up_proj"]
    assert st["model.layers.0.self_attn.q_proj"].n == 32


def test_layerwise_stats_equal_one_pass_when_nothing_changes(tiny_config):
    from llmlab.model.transformer import Transformer
    torch.manual_seed(0)
    model = Transformer(tiny_config).eval()
    calib = torch.randint(0, 97, (4, 16))
    names = list(calibrate.quantizable_linears(model))
    once = calibrate.collect(model, calib, names, {"hessian"}, batch_size=2)
    seen = {}
    calibrate.layerwise(model, calib, {"hessian"}, lambda ns, st, ctx: seen.update(st), batch_size=2)
    assert set(seen) == set(names)
    for n in names:
        assert torch.allclose(seen[n].H, once[n].H, atol=1e-6), n


def test_awq_module_objective():
    """The MLP-output objective: its function is the MLP's own forward, and with an output map that
    just concatenates the group's outputs it chooses what the per-Linear objective chooses."""
    from llmlab.model.config import ModelConfig
    from llmlab.model.transformer import Transformer
    from llmlab.quant.apply import _mlp_output
    from llmlab.quant.awq import search_scale
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=32, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=128, max_position_embeddings=16))
    mlp = m.model.layers[0].mlp
    x = torch.randn(40, 64) * torch.linspace(0.1, 5, 64)
    names = ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]
    fn = _mlp_output(m, names)
    with torch.no_grad():
        assert torch.allclose(fn([x @ mlp.gate_proj.weight.t(), x @ mlp.up_proj.weight.t()]), mlp(x), atol=1e-5)
    assert _mlp_output(m, ["model.layers.0.self_attn.q_proj"]) is None
    ws, mean_abs = [mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach()], x.abs().mean(0)
    s1, a1 = search_scale(ws, x, mean_abs, 4, 32, False)
    s2, a2 = search_scale(ws, x, mean_abs, 4, 32, False, out_fn=lambda ys: torch.cat(ys, -1))
    assert a1 == a2 and torch.equal(s1, s2)


def test_ragged_last_group_is_its_own_group():
    """g128 on a 576-wide row (SmolLM2): 4 groups of 128 and one of 64, each quantized exactly as
    if alone (zero padding changes neither absmax nor the zero-point range)."""
    from llmlab.quant.ptq import fake_quant, qparams, rtn_fake
    torch.manual_seed(0)
    w = torch.randn(6, 576) + 0.3
    for sym in (False, True):
        q = rtn_fake(w, 4, 128, sym)
        for c0, c1 in ((0, 128), (384, 512), (512, 576)):
            g = w[:, c0:c1]
            s, z = qparams(g, 4, sym)
            assert torch.equal(q[:, c0:c1], fake_quant(g, s, z, 4, sym))
        assert torch.equal(rtn_fake(w[:, :512], 4, 128, sym), rtn(w[:, :512], 4, 128, sym))


def test_ragged_groups_in_gptq_and_quantize_model(tiny_config):
    """GPTQ with a ragged last group still beats RTN's layer error and keeps each group on a
    16-level grid; quantize_model accepts a non-dividing group only when asked to."""
    torch.manual_seed(0)
    x, w = outlier_inputs(k=192), torch.randn(48, 192) * 0.05
    h = gptq.hessian(x)
    with pytest.raises(UserError, match="does not divide"):
        gptq.gptq(w, h, group=128)
    q = gptq.gptq(w, h, group=128, ragged=True)
    from llmlab.quant.ptq import rtn_fake
    assert gptq.layer_error(w, q, h) < 0.8 * gptq.layer_error(w, rtn_fake(w, 4, 128, False), h)
    assert len(torch.unique(q[0, 128:])) <= 16 and len(torch.unique(q[0, :128])) <= 16
    from llmlab.model.transformer import Transformer
    model = Transformer(tiny_config).eval()  # rows of 32 (attention) and 86 (down_proj)
    calib = torch.randint(0, 97, (4, 16))
    for method in ("rtn", "gptq", "awq"):
        with pytest.raises(UserError, match="does not divide"):
            quantize_model(copy.deepcopy(model), method, group=24, calib=calib)
        m = copy.deepcopy(model)
        info = quantize_model(m, method, group=24, calib=calib, ragged_groups=True)
        w_q = m.model.layers[0].self_attn.q_proj.weight  # 32 = 24 + 8
        assert len(torch.unique(w_q[0, 24:])) <= 16, method
        assert info["stored_bytes"] > 0


def test_awq_attention_objective_picks_the_least_attention_error():
    """The q/k/v group scored on the whole attention output (AutoAWQ's module2inspect=self_attn):
    the loss is 0 at the full-precision weights, and the scale chosen is the grid point whose
    attention-output error, recomputed here by hand, is least."""
    from llmlab.model.config import ModelConfig
    from llmlab.model.transformer import Transformer
    from llmlab.quant.apply import _attention_loss
    from llmlab.quant.awq import search_scale
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=32, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=16)).eval()
    block = m.model.layers[0]
    xs = [torch.randn(2, 16, 64) * torch.linspace(0.2, 4, 64)]
    rope = m.rope(torch.arange(16), torch.float32)
    names = [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"]
    assert _attention_loss(names[:2], (block, xs, (rope, None, None))) is None
    assert _attention_loss(names, None) is None
    loss = _attention_loss(names, (block, xs, (rope, None, None)))
    attn = block.self_attn
    ws = [attn.q_proj.weight.detach().clone(), attn.k_proj.weight.detach().clone(), attn.v_proj.weight.detach().clone()]
    assert loss(ws) == 0.0
    xn = block.input_layernorm(xs[0]).detach()
    mean_abs = xn.reshape(-1, 64).abs().mean(0)
    s, a = search_scale(ws, None, mean_abs, 4, 32, False, loss_fn=loss)
    with torch.no_grad():
        ref = attn(xn, rope)
        errs = []
        for r in range(20):
            sc = mean_abs.pow(r / 20)
            sc = sc / (sc.max() * sc.min()).sqrt()
            for p, w in zip((attn.q_proj, attn.k_proj, attn.v_proj), ws):
                p.weight.copy_(rtn_fq(w * sc, 4, 32, False) / sc)
            errs.append(float(((attn(xn, rope) - ref) ** 2).mean()))
            for p, w in zip((attn.q_proj, attn.k_proj, attn.v_proj), ws):
                p.weight.copy_(w)
    assert a == errs.index(min(errs)) / 20 and min(errs) < errs[0]
    assert torch.equal(attn.q_proj.weight, ws[0])  # the loss restores the weights


def test_awq_clip_search_equals_the_elementwise_reference():
    """search_clip's d H d^T form chooses what AutoAWQ's elementwise form (rows x groups x gs
    products, written out here) chooses, ragged last group included."""
    from llmlab.quant.awq import search_clip
    torch.manual_seed(0)
    w, x = torch.randn(40, 80) * 0.05, outlier_inputs(n=96, k=80)
    w[:, 3] *= 8  # outliers worth clipping around
    gs, n_groups = 32, 3  # 80 = 32 + 32 + 16
    got = search_clip(w, x, 4, gs, False, n_rows=96)
    ref = torch.empty_like(w)
    for c in range(w.shape[0]):
        for g in range(n_groups):
            sl = slice(g * gs, min((g + 1) * gs, 80))
            wg, xg = w[c:c + 1, sl], x[:, sl]
            # float32 clip values as the code computes them: a clip of both ends puts the zero-point
            # at 7.5, where the last bit of mx decides the rounding
            y, amax = xg @ wg.t(), wg.abs().amax()
            errs = []
            for i in range(10):
                mx = amax * (1 - i / 20)
                q = rtn_fq(torch.maximum(torch.minimum(wg, mx), -mx), 4, wg.shape[1], False)
                errs.append(float(((xg @ q.t() - y) ** 2).mean()))
            mx = amax * (1 - errs.index(min(errs)) / 20)
            ref[c, sl] = torch.maximum(torch.minimum(wg, mx), -mx)
    assert torch.allclose(got, ref, atol=1e-7)
    assert not torch.equal(got, w)  # some group was clipped


def test_awq_clip_search_lowers_the_output_error_on_calibration_data():
    """AWQ's clip search (on by default, as the paper and llm-awq) against AWQ without it, on the
    calibration rows it searched: no group's share of the output error grows (ratio 1 is a
    candidate), the layer's output error falls, the scale search is unchanged, and q/k are never
    clipped."""
    x = outlier_inputs(n=512, seed=4)
    g = torch.Generator().manual_seed(5)
    ws = [torch.randn(64, 256, generator=g) * 0.05 for _ in range(2)]
    for w in ws:
        w[:, 9] *= 8  # heavy-tailed rows, where a clip pays off
    mean_abs = x.abs().mean(0)
    on, a_on = awq_group(ws, ["gate_proj", "up_proj"], x, mean_abs, 4, 128, False)
    off, a_off = awq_group(ws, ["gate_proj", "up_proj"], x, mean_abs, 4, 128, False, clip=False)
    assert a_on == a_off
    for w, q1, q0 in zip(ws, on, off):
        assert float(((x @ (w - q1).t()) ** 2).mean()) < 0.95 * float(((x @ (w - q0).t()) ** 2).mean())
        for c in (slice(0, 128), slice(128, 256)):  # each group's own output error, row by row
            e1 = ((x[:, c] @ (w - q1)[:, c].t()) ** 2).mean(0)
            e0 = ((x[:, c] @ (w - q0)[:, c].t()) ** 2).mean(0)
            assert bool((e1 <= e0 * (1 + 1e-4) + 1e-12).all())
    qk, _ = awq_group(ws, ["q_proj", "k_proj"], x, mean_abs, 4, 128, False)
    assert all(torch.equal(a, b) for a, b in zip(qk, off))
    from llmlab.quant.awq import search_clip
    assert torch.equal(search_clip(ws[0], x, 4, 128, False, steps=1), ws[0])  # one ratio: 1, no clip


def test_awq_clip_is_the_default_and_its_knobs_are_checked(tiny_config):
    model, calib, ids, _ = tiny_quant_case(tiny_config)
    out = {}
    for clip in (None, True, False):
        m = copy.deepcopy(model)
        quantize_model(m, "awq", group=32, calib=calib, clip=clip)
        out[clip] = m(ids).detach()
    assert torch.equal(out[None], out[True]) and not torch.equal(out[True], out[False])
    for bad in (dict(awq_grid=0), dict(awq_clip_steps=0), dict(awq_clip_shrink=1.0)):
        with pytest.raises(UserError, match="awq_"):
            quantize_model(copy.deepcopy(model), "awq", group=32, calib=calib, **bad)


def test_layerwise_fp_inputs_see_the_full_precision_model(tiny_config):
    """block_inputs="fp" (llm-awq / AutoAWQ): while every block is quantized, each block's statistics
    are still those of the full-precision model; the default ("quantized") feeds later blocks the
    quantized blocks' outputs, so from block 1 on they differ."""
    from llmlab.model.transformer import Transformer
    torch.manual_seed(0)
    model = Transformer(tiny_config).eval()
    calib = torch.randint(0, 97, (4, 16))
    names = list(calibrate.quantizable_linears(model))
    once = calibrate.collect(model, calib, names, {"hessian"}, batch_size=2)

    def run(fp_inputs: bool) -> dict:
        m, seen = copy.deepcopy(model), {}

        def quantize_layer(ns, st, ctx):
            seen.update(st)
            with torch.no_grad():
                for n in ns:  # a coarse 2-bit RTN, so a quantized block's output clearly moves
                    w = m.get_submodule(n).weight
                    w.copy_(rtn(w, 2, "channel", True))
        calibrate.layerwise(m, calib, {"hessian"}, quantize_layer, batch_size=2, fp_inputs=fp_inputs)
        return seen

    fp, q = run(True), run(False)
    assert set(fp) == set(q) == set(names)
    for n in names:
        assert torch.allclose(fp[n].H, once[n].H, atol=1e-6), n
    later = [n for n in names if not n.startswith("model.layers.0.")]
    rel = {n: float((q[n].H - once[n].H).abs().max() / once[n].H.abs().max()) for n in later}
    assert later and min(rel.values()) > 1e-2, rel
    first = [n for n in names if n.startswith("model.layers.0.self_attn")]
    assert all(torch.allclose(q[n].H, once[n].H, atol=1e-6) for n in first)  # block 0's input is the embedding
    # wired through quantize_model: GPTQ's block-0 weights are the same either way, block 1's are not
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    quantize_model(a, "gptq", bits=3, group=-1, calib=calib, block_inputs="fp")
    quantize_model(b, "gptq", bits=3, group=-1, calib=calib)
    wa, wb = a.model.layers, b.model.layers
    assert torch.equal(wa[0].mlp.down_proj.weight, wb[0].mlp.down_proj.weight)
    assert not torch.equal(wa[1].mlp.down_proj.weight, wb[1].mlp.down_proj.weight)
    with pytest.raises(UserError, match="block_inputs"):
        quantize_model(copy.deepcopy(model), "awq", calib=calib, block_inputs="float")
