"""AWQ, activation-aware weight quantization (Lin et al. 2023, arXiv:2306.00978).

Few weights matter much: those that meet large activations. AWQ protects them without mixed
precision by scaling input channel j of the weight up by s_j and the activation down by it,
    y = x W^T = (x / s) (W diag(s))^T,  quantized as  (x / s) Q(W diag(s))^T,
which shrinks the relative rounding error of salient channels. s = mean_t|x_tj|^alpha with
alpha in {0, 1/20, ..., 19/20} searched per group of Linears that share an input (q/k/v;
gate/up; o; down), minimizing the output MSE on calibration rows, s normalised by
sqrt(max s * min s) (AutoAWQ's default "duo scaling" divides by the weights' per-channel mean
magnitude too, s = mean|x|^alpha / mean|w^|^(1-alpha): option `duo`). Then each output row's
weight range is clipped (the paper's and llm-awq's `auto_clip`, on by default): per group of weights, the clip ratio in {1, 0.95, ..., 0.55}
(max_shrink 0.5 on a grid of 20, llm-awq's defaults) with the least output error on calibration
rows is kept (skipped for q/k, whose outputs meet in attention scores, as the reference code
does). Finally round to nearest.

Data: the per-Linear objectives and the clip search score calibration rows x. Given h = x^T x / n
over ALL calibration tokens (option `h`), both use it instead of a row sample: a Linear's output
error mean_t ||x_t D^T||^2 = sum_o d_o h d_o^T exactly, at a cost independent of the token count
(AutoAWQ scores its searches on all of its 64k tokens, ours by default on 512 sampled rows).

The division by s is folded into the previous operator when one can take it (a norm's weight,
the up projection for down); here the effective weight Q(W diag(s)) diag(1/s) is what the
model computes with, which gives the same outputs.
"""
from __future__ import annotations

import torch

from llmlab.quant.ptq import pad_to_group, rtn_fake as rtn_fq


def weight_mean(ws: list[torch.Tensor], group: int) -> torch.Tensor:
    """AutoAWQ's w_mean: the Linears' rows stacked, |w| divided by its group's max |w| (+1e-6), the
    mean over rows per input channel (a ragged last group padded with zeros, as GPTQModel does)."""
    w = torch.cat(ws).abs()
    k = w.shape[1]
    gs = group if group > 0 else k
    g = pad_to_group(w, gs).reshape(-1, gs)
    return (g / (g.amax(dim=1, keepdim=True) + 1e-6)).reshape(w.shape[0], -1)[:, :k].mean(0)


def candidate_scale(mean_abs: torch.Tensor, a: float, w_mean: torch.Tensor | None = None) -> torch.Tensor:
    """s for alpha a: mean|x|^a, or with w_mean AutoAWQ's duo scaling mean|x|^a / (w_mean^(1-a) + 1e-4)
    (its default, `duo_scaling=True`); normalised by sqrt(max s * min s)."""
    if w_mean is None:
        s = mean_abs.clamp_min(1e-4).pow(a)
    else:
        s = (mean_abs.pow(a) / (w_mean.pow(1 - a) + 1e-4)).clamp_min(1e-4)
    return s / (s.max() * s.min()).sqrt()


def linear_loss(ws: list[torch.Tensor], h: torch.Tensor):
    """candidate weights -> sum over ws of mean_{t,o} (x_t . (c_o - w_o))^2, through h = x^T x / n
    (k x k): sum_o d_o h d_o^T / rows, the same number as on the rows themselves."""
    h = h.float()

    def loss(cand):
        return sum(float(((c - w) @ h * (c - w)).sum()) / w.shape[0] for c, w in zip(cand, ws))
    return loss


@torch.no_grad()
def search_scale(ws: list[torch.Tensor], x: torch.Tensor, mean_abs: torch.Tensor, bits: int, group: int,
                 sym: bool, grid: int = 20, out_fn=None, loss_fn=None, duo: bool = False,
                 h: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """-> (s (k,), alpha) minimizing sum over ws of ||x W^T - x (Q(W s)/s)^T||^2, or, with
    out_fn (the list of the group's outputs -> the module output they feed, e.g. the MLP's
    down(act(gate) * up)), the error of that module output (AutoAWQ's `module2inspect`), or,
    with loss_fn (the group's candidate weights -> an error, e.g. of the whole attention's
    output over calibration sequences), that error. duo: AutoAWQ's duo scaling (`candidate_scale`).
    h: x^T x / n over all calibration tokens: the per-Linear objective computed from it (`linear_loss`)."""
    if loss_fn is None and out_fn is None and h is not None:
        loss_fn = linear_loss(ws, h)
    elif loss_fn is None and out_fn is not None:
        y = out_fn([x @ w.t() for w in ws])

        def loss_fn(cand):
            return float(((out_fn([x @ c.t() for c in cand]) - y) ** 2).mean())
    elif loss_fn is None:
        ys = [x @ w.t() for w in ws]

        def loss_fn(cand):
            return sum(float(((x @ c.t() - y) ** 2).mean()) for c, y in zip(cand, ys))
    w_mean = weight_mean(ws, group) if duo else None
    best, best_s, best_a = float("inf"), torch.ones_like(mean_abs), 0.0
    for r in range(grid):
        a = r / grid
        s = candidate_scale(mean_abs, a, w_mean)
        err = loss_fn([rtn_fq(w * s, bits, group, sym) / s for w in ws])
        if err < best:
            best, best_s, best_a = err, s, a
    return best_s, best_a


@torch.no_grad()
def search_clip(w: torch.Tensor, x: torch.Tensor, bits: int, group: int, sym: bool, steps: int = 10,
                n_rows: int = 512, chunk: int = 256, max_shrink: float = 0.5,
                h: torch.Tensor | None = None) -> torch.Tensor:
    """Per weight group, the clip of |w| (a fraction 1 - i max_shrink / steps, i < steps, of its
    absmax; ratio 1 is a candidate, so no group's error exceeds its unclipped one) with the least error on that
    group's share of the output (on up to n_rows of x: AutoAWQ's n_sample_token 512); returns
    the clipped weight. The group's output error over the rows, mean_t (x_t,g . (q_g - w_g))^2,
    is computed as d H_g d^T with H_g = mean_t x_t,g^T x_t,g (gs x gs): the same number as
    AutoAWQ's elementwise (rows x groups x gs) product, ~100x cheaper on a CPU. h (k x k): x^T x / n
    over all calibration tokens, whose diagonal blocks replace the row sample's (x is then unused)."""
    co, k0 = w.shape
    gs = group if group > 0 else k0
    w = pad_to_group(w, gs)  # a ragged last group: zero columns add nothing
    k = w.shape[1]
    ng = k // gs
    if h is None:
        xg = pad_to_group(x, gs)[:: max(1, x.shape[0] // n_rows)][:n_rows].reshape(-1, ng, gs).transpose(0, 1).double()  # (ng, n, gs)
        h = (xg.transpose(1, 2) @ xg / xg.shape[1]).float()  # (ng, gs, gs)
    else:
        hp = torch.zeros(k, k, dtype=torch.float64)
        hp[:k0, :k0] = h
        h = torch.stack([hp[i * gs:(i + 1) * gs, i * gs:(i + 1) * gs] for i in range(ng)]).float()
    out = torch.empty_like(w)
    for c0 in range(0, co, chunk):
        wc = w[c0:c0 + chunk].reshape(-1, ng, gs)  # (c, ng, gs)
        org_max = wc.abs().amax(dim=-1, keepdim=True)
        best_err = torch.full(org_max.shape, float("inf"))
        best_max = org_max.clone()
        for i in range(steps):
            mx = org_max * (1 - i * max_shrink / steps)
            cw = torch.maximum(torch.minimum(wc, mx), -mx)
            d = (rtn_fq(cw.reshape(-1, gs), bits, gs, sym).view_as(cw) - wc).transpose(0, 1)  # (ng, c, gs)
            err = ((d @ h) * d).sum(-1).t().unsqueeze(-1)  # (c, ng, 1)
            better = err < best_err
            best_err[better], best_max[better] = err[better], mx[better]
        out[c0:c0 + chunk] = torch.maximum(torch.minimum(wc, best_max), -best_max).reshape(-1, k)
    return out[:, :k0]


def awq_group(ws: list[torch.Tensor], names: list[str], x: torch.Tensor, mean_abs: torch.Tensor, bits: int,
              group: int, sym: bool, clip: bool = True, out_fn=None, loss_fn=None, grid: int = 20,
              clip_steps: int = 10, clip_shrink: float = 0.5, duo: bool = False,
              h: torch.Tensor | None = None) -> tuple[list[torch.Tensor], float]:
    """The effective AWQ weights of Linears sharing one input, and the alpha chosen. grid: alpha
    points; clip: the weight-clipping search after the scales (clip_steps ratios down to
    1 - clip_shrink (exclusive), llm-awq's 10 and 0.5); duo: AutoAWQ's duo scaling; h: x^T x / n over
    all calibration tokens, for the per-Linear objective and the clip search instead of the rows x."""
    s, a = search_scale(ws, x, mean_abs, bits, group, sym, grid=grid, out_fn=out_fn, loss_fn=loss_fn, duo=duo, h=h)
    hs = None if h is None else h.double() / (s.double()[:, None] * s.double()[None, :])  # inputs x / s
    out = []
    for w, n in zip(ws, names):
        ws_ = w * s
        if clip and not n.endswith(("q_proj", "k_proj")):
            ws_ = search_clip(ws_, x / s, bits, group, sym, steps=clip_steps, max_shrink=clip_shrink, h=hs)
        out.append(rtn_fq(ws_, bits, group, sym) / s)
    return out, a
