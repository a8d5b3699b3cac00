"""AWQ's duo scaling (AutoAWQ's default): s = mean|x|^a / (w_mean^(1-a) + 1e-4), against hand computations."""
import copy

import torch

from llmlab.quant.apply import quantize_model
from llmlab.quant.awq import candidate_scale, search_scale, weight_mean
from tiny_quant import tiny_quant_case


def test_weight_mean_is_the_per_group_normalised_magnitude_averaged_over_rows():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 6, generator=g), torch.randn(2, 6, generator=g)
    w = torch.cat([a, b]).abs()  # groups of 4: columns 0-3, and the ragged 4-5
    ref = torch.empty_like(w)
    for r in range(5):
        ref[r, :4] = w[r, :4] / (w[r, :4].max() + 1e-6)
        ref[r, 4:] = w[r, 4:] / (w[r, 4:].max() + 1e-6)
    assert torch.allclose(weight_mean([a, b], 4), ref.mean(0), atol=1e-7)
    per_row = w / (w.amax(dim=1, keepdim=True) + 1e-6)
    assert torch.allclose(weight_mean([a, b], -1), per_row.mean(0), atol=1e-7)


def test_candidate_scale_plain_and_duo():
    x_mean, w_mean = torch.tensor([0.5, 2.0, 8.0]), torch.tensor([0.25, 0.5, 1.0])
    s = x_mean.pow(0.3)
    assert torch.allclose(candidate_scale(x_mean, 0.3), s / (s.max() * s.min()).sqrt())
    d = x_mean.pow(0.3) / (w_mean.pow(0.7) + 1e-4)
    assert torch.allclose(candidate_scale(x_mean, 0.3, w_mean), d / (d.max() * d.min()).sqrt())
    assert not torch.allclose(candidate_scale(x_mean, 0.0, w_mean), torch.ones(3))  # a = 0 is not the identity


def test_duo_search_takes_the_grid_point_with_the_least_output_error():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 32, generator=g) * torch.linspace(0.1, 5, 32)
    w = torch.randn(8, 32, generator=g)
    s, a = search_scale([w], x, x.abs().mean(0), 4, 16, False, grid=10, duo=True)
    from llmlab.quant.awq import rtn_fq
    wm = weight_mean([w], 16)
    errs = [float(((x @ (rtn_fq(w * c, 4, 16, False) / c).t() - x @ w.t()) ** 2).mean())
            for c in (candidate_scale(x.abs().mean(0), r / 10, wm) for r in range(10))]
    assert a == errs.index(min(errs)) / 10
    assert torch.equal(s, candidate_scale(x.abs().mean(0), a, wm))


def test_quantize_model_awq_duo(tiny_config):
    model, calib, ids, _ = tiny_quant_case(tiny_config)
    out = {}
    for duo in (False, True):
        m = copy.deepcopy(model)
        quantize_model(m, "awq", group=32, calib=calib, awq_duo=duo, awq_objective="module")
        out[duo] = m(ids).detach()
    assert torch.isfinite(out[True]).all() and not torch.equal(out[False], out[True])
