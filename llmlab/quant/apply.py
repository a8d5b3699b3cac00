"""Apply one post-training method to every quantizable Linear of a model (in place).

Weight-only methods (rtn, nf4, gptq, awq) replace each weight by its dequantized value, so the
model computes exactly what a kernel over the stored codes would. Activation methods (w8a8,
smoothquant, llm_int8) swap the Linear for a module that quantizes its input on the fly.
`stored_bytes` is what the quantized projections take as codes + fp16 scales (+ zero-points),
plus the unquantized tensors at fp32; it is computed, not a file size (GGUF export writes files).
"""
from __future__ import annotations

import torch
from torch import nn

from llmlab.errors import UserError
from llmlab.log import get_logger
from llmlab.quant import calibrate
from llmlab.quant.ptq import check_bits, rtn_grid

METHODS = ("rtn", "nf4", "gptq", "awq", "awq_gptq", "w8a8", "smoothquant", "llm_int8")
WEIGHT_CALIBRATED = ("gptq", "awq", "awq_gptq")


def _set_module(model: nn.Module, name: str, mod: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, mod)


def input_groups(stats: dict) -> list[list[str]]:
    """Linears that read the same tensor (their Stats object is shared), in model order."""
    groups: dict[int, list[str]] = {}
    for n, st in stats.items():
        groups.setdefault(id(st), []).append(n)
    return list(groups.values())


def weight_bits(method: str, bits: int, group: int | str, sym: bool, k: int) -> float:
    """Stored bits per weight (codes + fp16 scale per group + zero-point for asymmetric grids)."""
    if method == "nf4":
        return 4 + 8 / 64 + 32 / (64 * 256)  # double-quantized absmax (llmlab.quant.nf4)
    if method in ("w8a8", "smoothquant", "llm_int8"):
        bits, group, sym = 8, "channel", True
    n_groups = 1 if group in ("channel", -1, 0) else -(-k // group)  # a ragged last group counts once
    return bits + (16 + (0 if sym else bits)) * n_groups / k


def _mlp_output(model, names: list[str]):
    """For a gated MLP's [gate_proj, up_proj]: their outputs -> the MLP's output through the
    full-precision down projection (what AutoAWQ inspects for this group); None otherwise."""
    if [n.rpartition(".")[2] for n in names] != ["gate_proj", "up_proj"]:
        return None
    mlp = model.get_submodule(names[0].rpartition(".")[0])
    w_down = mlp.down_proj.weight.float()
    return lambda ys: (mlp.act(ys[0]) * ys[1]) @ w_down.t()


def _attention_loss(names: list[str], ctx, n_seq: int = 8):
    """For an attention's [q_proj, k_proj, v_proj] inside block-by-block calibration: candidate
    weights -> the mean squared error of the whole attention output (through the full-precision
    o_proj) on up to n_seq calibration sequences (AutoAWQ's module2inspect=self_attn); None when
    the group is something else or no block context is given."""
    if ctx is None or [n.rpartition(".")[2] for n in names] != ["q_proj", "k_proj", "v_proj"]:
        return None
    block, xs, rest = ctx
    attn = block.self_attn
    if not hasattr(block, "input_layernorm") or getattr(block, "placement", "pre") != "pre":
        return None
    batches, n = [], 0
    for b in xs:  # whole calibration batches (a mask in `rest` is shaped for one)
        if n >= n_seq:
            break
        batches.append(b)
        n += b.shape[0]
    with torch.no_grad():
        xn = [block.input_layernorm(b) for b in batches]
        refs = [attn(x, *rest) for x in xn]
    projs = [attn.q_proj, attn.k_proj, attn.v_proj]

    @torch.no_grad()
    def loss(ws: list[torch.Tensor]) -> float:
        saved = [p.weight.data for p in projs]
        try:
            for p, w in zip(projs, ws):
                p.weight.data = w.to(saved[0].dtype)
            return sum(float(((attn(x, *rest) - r) ** 2).sum()) for x, r in zip(xn, refs)) / sum(
                r.numel() for r in refs)
        finally:
            for p, w in zip(projs, saved):
                p.weight.data = w
    return loss


def _awq_scale(model, g: list[str], lins: dict, st, bits: int, group: int, sym: bool, module: bool, ctx,
               grid: int = 20, duo: bool = False):
    from llmlab.quant.awq import search_scale
    return search_scale([lins[n].weight.float() for n in g], st.sample, st.mean_abs, bits, group, sym, grid=grid, duo=duo,
                        out_fn=_mlp_output(model, g) if module else None,
                        loss_fn=_attention_loss(g, ctx) if module else None)


def _weight_only(model, lins: dict, names: list[str], stats: dict | None, method: str, bits: int, group: int,
                 sym: bool, act_order: bool, awq_objective: str = "linear", ctx=None, percdamp: float = 0.01,
                 clip: bool = False, awq: dict | None = None, grids: dict | None = None) -> list[float]:
    """Quantize the named Linears' weights in place; -> AWQ's chosen alphas. awq: AWQ's search
    settings (grid, clip_steps, clip_shrink, duo, rows). grids: receives RTN's / GPTQ's `GroupGrid` by name."""
    awq = awq or {}
    alphas = []
    module = awq_objective == "module"
    if method == "awq":
        from llmlab.quant.awq import awq_group
        sub = {n: stats[n] for n in names}
        opts = {k: v for k, v in awq.items() if k != "rows"}
        for g in input_groups(sub):
            st = sub[g[0]]
            h = st.H / 2 if awq.get("rows") == "all" else None  # x^T x / n over every calibration token
            new, a = awq_group([lins[n].weight.float() for n in g], g, st.sample, st.mean_abs, bits, group, sym,
                               clip=clip, **opts, h=h, out_fn=_mlp_output(model, g) if module else None,
                               loss_fn=_attention_loss(g, ctx) if module else None)
            alphas.append(a)
            for n, w in zip(g, new):
                lins[n].weight.copy_(w)
        return alphas
    if method == "awq_gptq":  # AWQ's scales, then GPTQ on W diag(s) with inputs x / s: H' = H / (s s^T)
        from llmlab.quant.gptq import gptq, scaled_hessian
        sub = {n: stats[n] for n in names}
        for g in input_groups(sub):
            st = sub[g[0]]
            s, a = _awq_scale(model, g, lins, st, bits, group, sym, module, ctx, awq.get("grid", 20),
                              awq.get("duo", False))
            alphas.append(a)
            h = scaled_hessian(st.H, s)
            for n in g:
                w = lins[n].weight
                w.copy_(gptq(w.float() * s, h, bits, group, sym, act_order, percdamp=percdamp, ragged=True,
                             clip=clip) / s)
        return alphas
    for n in names:
        w = lins[n].weight
        if method == "nf4":
            from llmlab.quant.nf4 import quantize_nf4
            w.copy_(quantize_nf4(w).dequantize(w.dtype))
            continue
        if method == "rtn":
            grid = rtn_grid(w.detach().float(), bits, group, sym)
        else:
            from llmlab.quant.gptq import gptq_grid
            grid = gptq_grid(w, stats[n].H, bits, group, sym, act_order, percdamp=percdamp, ragged=True, clip=clip)
        w.copy_(grid.dequantize().to(w.dtype))
        if grids is not None:
            grids[n] = grid
    return alphas


CHOICES = {"awq_objective": ("linear", "module"), "block_inputs": ("quantized", "fp"),
           "awq_sample": ("strided", "uniform"), "awq_rows": ("sample", "all")}  # quantize_model's string options


def check_choices(**options: str) -> None:
    """Each of quantize_model's string options (`CHOICES`) given here is one of its values (UserError)."""
    for key, value in options.items():
        if value not in CHOICES[key]:
            raise UserError(f"{key} must be {' or '.join(CHOICES[key])}, got '{value}'")


def check_numbers(percdamp: float, awq_grid: int, awq_clip_steps: int, awq_clip_shrink: float) -> None:
    """quantize_model's numeric GPTQ / AWQ knobs in range (UserError)."""
    if percdamp <= 0:
        raise UserError(f"percdamp must be > 0, got {percdamp}")
    if awq_grid < 1 or awq_clip_steps < 1 or not 0 < awq_clip_shrink < 1:
        raise UserError(f"AWQ needs awq_grid >= 1, awq_clip_steps >= 1 and 0 < awq_clip_shrink < 1, got "
                        f"{awq_grid}, {awq_clip_steps}, {awq_clip_shrink}")


@torch.no_grad()
def quantize_model(model, method: str, bits: int = 4, group: int = 128, sym: bool = False,
                   calib: torch.Tensor | None = None, alpha: float = 0.5, threshold: float = 6.0,
                   act_order: bool = True, stats: dict | None = None, sequential: bool = True,
                   awq_objective: str = "linear", ragged_groups: bool = False, percdamp: float = 0.01,
                   clip: bool | None = None, max_rows: int = 512, awq_grid: int = 20, awq_clip_steps: int = 10,
                   awq_clip_shrink: float = 0.5, awq_duo: bool = False, block_inputs: str = "quantized",
                   grids: dict | None = None, awq_rows: str = "sample", awq_sample: str = "strided") -> dict:
    """-> {'stored_bytes', 'quantized_params', 'layers', ...}. GPTQ and AWQ calibrate block by
    block on `calib` (each block sees the already-quantized blocks' outputs) unless `sequential`
    is off or `stats` (gathered once on the full-precision model by `calibrate.collect`) is given.
    awq_objective: "linear" scores AWQ's scales on the outputs of the Linears sharing an input;
    "module" scores the gate/up group on the MLP's output and the q/k/v group on the whole
    attention's output instead (AutoAWQ's module2inspect).
    ragged_groups: a group size that does not divide a row leaves a shorter last group (e.g.
    SmolLM2's 576-wide rows at g128: 4 x 128 + 64) instead of being refused.
    awq_gptq: AWQ's scale search, then GPTQ on the scaled weights (the AWQ + GPTQ combination).
    percdamp: GPTQ's dampening, a fraction of mean(diag H) added to H's diagonal.
    clip: GPTQ's group ranges chosen by output-error search (`gptq.clip_qparams`; needs act_order).
    max_rows: calibration input rows (spread over all windows) AWQ's scale and clip searches use.
    awq_duo: AutoAWQ's duo scaling (`awq.candidate_scale`).
    awq_rows: "sample" (AWQ's per-Linear objectives and clip search on the max_rows sampled rows) or
    "all" (on every calibration token, exactly, through x^T x / n: `awq.linear_loss`).
    awq_sample: how block-by-block calibration picks AWQ's max_rows sample rows: "strided" (every
    (tokens // max_rows)-th token) or "uniform" (seeded random token indices; `calibrate.layerwise`).
    block_inputs: in block-by-block calibration, block i+1 sees the outputs of the "quantized" blocks
    before it (GPTQ's reference code; the default) or of the full-precision ones, "fp" (what llm-awq
    and AutoAWQ do for AWQ).
    grids: a dict that receives each RTN / GPTQ Linear's codes and (scale, zero) (`ptq.GroupGrid`)
    by name, for the block kernel (`blocks.attach_blocks`)."""
    if method not in METHODS:
        raise UserError(f"unknown method '{method}' (one of: {', '.join(METHODS)})")
    check_choices(awq_objective=awq_objective, block_inputs=block_inputs, awq_sample=awq_sample, awq_rows=awq_rows)
    if method in ("rtn",) + WEIGHT_CALIBRATED:
        check_bits(bits)
    check_numbers(percdamp, awq_grid, awq_clip_steps, awq_clip_shrink)
    if clip is None:
        clip = method == "awq"
    awq = dict(grid=awq_grid, clip_steps=awq_clip_steps, clip_shrink=awq_clip_shrink, duo=awq_duo, rows=awq_rows)
    if clip and not act_order and group > 0 and method in ("gptq", "awq_gptq"):
        raise UserError("GPTQ's clip search needs act_order=true (static groups) or per-channel groups")
    lins = calibrate.quantizable_linears(model)
    grp = "channel" if group <= 0 else group
    if method in ("rtn",) + WEIGHT_CALIBRATED:
        for n, m in lins.items():
            if isinstance(grp, int) and m.in_features % grp and not ragged_groups:
                raise UserError(f"group size {group} does not divide the row length {m.in_features} of {n}")
    info: dict = {"method": method, "layers": len(lins)}
    needs_calib = method in WEIGHT_CALIBRATED + ("smoothquant",) and stats is None
    if needs_calib and (calib is None or calib.numel() == 0):
        raise UserError(f"method '{method}' needs calibration data")
    want = {"gptq": {"hessian"}, "awq": {"sample"} | ({"hessian"} if awq_rows == "all" else set()),
            "awq_gptq": {"hessian", "sample"}}.get(method, set())
    if method in WEIGHT_CALIBRATED and stats is None and sequential and hasattr(model, "model"):
        alphas: list[float] = []
        calibrate.layerwise(model, calib, want, lambda names, st, ctx: alphas.extend(
            _weight_only(model, lins, [n for n in names if n in lins], st, method, bits, group, sym, act_order,
                         awq_objective, ctx, percdamp, clip, awq, grids)), max_rows=max_rows,
                            fp_inputs=block_inputs == "fp", sample=awq_sample)
    else:
        if needs_calib:
            stats = calibrate.collect(model, calib, list(lins), want)
        if method == "smoothquant":
            from llmlab.quant.smoothquant import W8A8Linear, smooth_scales
            for names in input_groups(stats):
                s = smooth_scales(stats[names[0]].absmax, [lins[n].weight for n in names], alpha)
                for n in names:
                    _set_module(model, n, W8A8Linear(lins[n], s))
        elif method in ("w8a8", "llm_int8"):
            from llmlab.quant.llm_int8 import Int8Linear
            from llmlab.quant.smoothquant import W8A8Linear
            for n, m in lins.items():
                _set_module(model, n, W8A8Linear(m) if method == "w8a8" else Int8Linear(m, threshold))
        else:
            alphas = _weight_only(model, lins, list(lins), stats, method, bits, group, sym, act_order, awq_objective,
                                  percdamp=percdamp, clip=clip, awq=awq, grids=grids)
    if method in ("awq", "awq_gptq") and alphas:
        info["alpha_mean"] = sum(alphas) / len(alphas)
    qparams = sum(m.weight.numel() for m in lins.values())
    qbytes = sum(m.weight.numel() * weight_bits(method, bits, grp, sym, m.in_features) / 8 for m in lins.values())
    quantized_ids = {id(m.weight) for m in lins.values()}
    other = 4 * sum(p.numel() for p in model.parameters() if id(p) not in quantized_ids)  # fp32, tied once
    info.update(quantized_params=qparams, stored_bytes=int(qbytes + other))
    get_logger().info(f"{method}: {len(lins)} Linears, {qparams / 1e6:.1f}M weights quantized")
    return info
