"""Where AWQ's search rows sit in the calibration windows, and how atypical window position 0 is.

`calibrate.layerwise` gives AWQ's scale and clip searches `max_rows` (512) rows: "strided" takes every
(tokens // 512)-th token of each 4-window batch, so with 256-token windows a stride that divides 256
takes the same positions of every window (stride 128 at 8x the calibration text: half the rows at
position 0); "uniform" draws seeded random token indices. This prints, for calibration sizes of 1x, 4x
and 8x --calib-windows, the share of the sample at window position 0 under each rule, and, from one
forward pass over --windows windows of the model, each sampled block's q/k/v and down_proj input norm
at position 0 over the median of the other positions, and position 0's share of sum ||x||^2.

    OMP_NUM_THREADS=1 python benchmarks/awq_positions.py [--windows 8] [--length 256]

Last line JSON: ratio keys `pos0_share_strided_c{1,4,8}` and `pos0_share_uniform_c8` (each over the
population's 1 / length: 1.0 = unbiased).
"""
from __future__ import annotations

import argparse
import json

import torch

from llmlab.quant import calibrate


def sample_positions(n_windows: int, length: int, max_rows: int = 512, batch: int = 4, sample: str = "strided"):
    """The window positions of the rows `calibrate.Stats` keeps (the same index arithmetic)."""
    total = n_windows * length
    if sample == "uniform":
        at = torch.randperm(total, generator=torch.Generator().manual_seed(0))[:max_rows]
        return (at % length).tolist()
    stride, got = max(1, total // max_rows), []
    for b0 in range(0, n_windows, batch):
        if len(got) >= max_rows:
            break
        rows = min(batch, n_windows - b0) * length
        got += [(b0 * length + i) % length for i in range(0, rows, stride)]
    return got[:max_rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--windows", type=int, default=8, help="windows of the forward pass (activation profile)")
    ap.add_argument("--calib-windows", type=int, default=32, help="1x calibration windows (quant_methods' default)")
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--quick", action="store_true", help="2 windows of 64 tokens")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.quick:
        a.windows, a.length = 2, 64
    ratio, ours = {}, {}
    for cx in (1, 4, 8):
        for sample in ("strided", "uniform"):
            pos = sample_positions(a.calib_windows * cx, a.length, sample=sample)
            share = pos.count(0) / len(pos)
            ours[f"pos0_share_{sample}_c{cx}"] = share
            print(f"calibration {cx}x ({a.calib_windows * cx} x {a.length}), {sample} rows: position 0 is "
                  f"{share:.4f} of the {len(pos)} rows (population {1 / a.length:.4f})")
    for k in ("pos0_share_strided_c1", "pos0_share_strided_c4", "pos0_share_strided_c8", "pos0_share_uniform_c8"):
        ratio[k] = ours[k] * a.length
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    m, tok = load_model_and_tokenizer(a.model, device="cpu", dtype="float32")
    m.__dict__.pop("quantized", None)
    w = calibrate.calibration_draw(tok, calibrate.wiki_split(False), a.windows, a.length, 0, seed=1)
    n = m.config.num_hidden_layers
    blocks = sorted({0, n // 6, n // 2, n - 1})
    acts: dict = {}
    hooks = []
    for i in blocks:
        layer = m.model.layers[i]
        for kind, mod in (("qkv", layer.self_attn.q_proj), ("down", layer.mlp.down_proj)):
            hooks.append(mod.register_forward_pre_hook(lambda _m, args, key=(kind, i): acts.__setitem__(key, args[0])))
    with torch.no_grad():
        m(w)
    for h in hooks:
        h.remove()
    for (kind, i), x in sorted(acts.items()):
        norm, sq = x.norm(dim=-1), (x ** 2).sum(-1)
        rel = float(norm[:, 0].median() / norm[:, 1:].median())
        energy = float(sq[:, 0].sum() / sq.sum())
        ours[f"{kind}_b{i}"] = {"pos0_norm_over_median": rel, "pos0_energy_share": energy}
        print(f"{kind} input, block {i}: ||x|| at position 0 / median of the others {rel:.2f}; "
              f"position 0's share of sum ||x||^2 {energy:.3f}")
    print(json.dumps({"benchmark": "awq_positions", "ours": ours, "peer": {}, "ratio": ratio,
                      "conditions": {"model": a.model, "windows": a.windows, "length": a.length, "threads": 1}}))


if __name__ == "__main__":
    main()
