"""GGUF block kernel (llmlab/quant) vs torch's fp32 matmul on the same weights, SmolLM2-135M.

- sweep_ms: one decode step's worth of matrix-vector products, all 211 matrices (the 30 layers'
  7 projections and the tied Q8_0 LM head), one input row each: ours through the blocks
  (`llmlab.kernels.ggml.matmul`), the peer `torch.mv` on the dequantized fp32 weights (MKL);
- gflops_M{rows}: layer 0's fused q/k/v, o, gate/up, down and the LM head at several row counts,
  ours on the decode path (M <= 32) or the GEMM path (M >= 512, AVX-512 only), the peer
  `F.linear` (MKL) and, as a reference column, oneDNN on weights packed once (what the engine
  uses for fp32 models).
Both sides alternate; medians. Every output is checked against float64 first. Last line: JSON
with ratios oriented ours / peer (sweep: peer ms / ours ms).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def timed(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and row counts (< 1 min)")
    args = ap.parse_args()
    repeats = 3 if args.quick else 7

    from llmlab.device import setup_threads
    from llmlab.infer import fused as runner  # fused, Packed, _lin live in llmlab/infer/fused.py
    from llmlab.model.gguf_io import load_gguf
    from llmlab.model.load import packaged_path
    from llmlab.kernels import ggml

    threads = setup_threads()
    model = load_gguf(packaged_path("smollm2"))
    if not ggml.available():
        raise SystemExit("the block kernel did not build (no C compiler?): nothing to compare")
    w = runner.fused(model)
    g = torch.Generator().manual_seed(0)

    mats = [L_w for L in w.layers for L_w in (L.qkv_w, L.o_w, L.up_w, L.down_w)] + [w.head_w]
    xs = [torch.randn(1, m.w.shape[1], generator=g) for m in mats]
    for m, x in zip(mats[:5] + mats[-1:], xs[:5] + xs[-1:]):  # correctness before speed
        ref = x.double() @ m.w.double().T
        assert (ggml.matmul(x, m.q).double() - ref).abs().max() < 1e-5 * ref.abs().max()

    def sweep_ours():
        for m, x in zip(mats, xs):
            ggml.matmul(x, m.q)

    def sweep_peer():
        for m, x in zip(mats, xs):
            torch.mv(m.w, x[0])

    res = {"sweep_ours": [], "sweep_peer": []}
    sweep_ours(), sweep_peer()
    for _ in range(repeats):
        res["sweep_ours"].append(timed(sweep_ours, 1) * 1e3)
        res["sweep_peer"].append(timed(sweep_peer, 1) * 1e3)
    ours = {"sweep_ms": statistics.median(res["sweep_ours"]),
            "blocks_mb": sum(m.q.nbytes for m in mats) / 1e6}
    peer = {"sweep_ms": statistics.median(res["sweep_peer"]),
            "fp32_mb": sum(m.w.numel() * 4 for m in mats) / 1e6}
    ratio = {"sweep": peer["sweep_ms"] / ours["sweep_ms"]}

    L0 = w.layers[0]
    shapes = [("qkv", L0.qkv_w), ("o", L0.o_w), ("up", L0.up_w), ("down", L0.down_w), ("head", w.head_w)]
    rows_list = [1, 32, 512] if args.quick else [1, 8, 32, 512, 2048]
    for M in rows_list:
        gemm = M >= 512 and ggml.has_gemm()
        t_ours = t_peer = t_dnn = 0.0
        flops = 0
        for name, m in shapes:
            if name == "head" and M > 512:
                continue
            x = torch.randn(M, m.w.shape[1], generator=g)
            ref = x.double() @ m.w.double().T
            assert (ggml.matmul(x, m.q, gemm=gemm).double() - ref).abs().max() < 2e-5 * ref.abs().max()
            pk = runner.Packed(m.w) if torch.backends.mkldnn.is_available() else None
            fns = {"ours": lambda: ggml.matmul(x, m.q, gemm=gemm), "peer": lambda: F.linear(x, m.w),
                   "dnn": (lambda: runner._lin(x, pk, None)) if pk is not None else None}
            n = max(1, int(1e7 / (M * m.w.numel())))
            times = {k: [] for k, f in fns.items() if f is not None}
            for k in times:
                fns[k]()
            for _ in range(repeats):
                for k in times:
                    times[k].append(timed(fns[k], n))
            t_ours += statistics.median(times["ours"])
            t_peer += statistics.median(times["peer"])
            t_dnn += statistics.median(times["dnn"]) if "dnn" in times else float("nan")
            flops += 2 * M * m.w.numel()
        key = f"gflops_M{M}"
        ours[key], peer[key] = flops / t_ours / 1e9, flops / t_peer / 1e9
        peer[f"onednn_packed_{key}"] = flops / t_dnn / 1e9
        ratio[key] = ours[key] / peer[key]
        print(f"M={M:5d} ({'gemm' if gemm else 'decode'} path)  ours {ours[key]:6.1f}  torch F.linear "
              f"{peer[key]:6.1f}  oneDNN packed {peer[f'onednn_packed_{key}']:6.1f} GFLOP/s")
    print(f"decode sweep (211 matrices, 1 row): ours {ours['sweep_ms']:.1f} ms over {ours['blocks_mb']:.0f} MB, "
          f"torch.mv {peer['sweep_ms']:.1f} ms over {peer['fp32_mb']:.0f} MB")
    print(json.dumps({"benchmark": "quant", "threads": threads, "gemm_path": ggml.has_gemm(),
                      "ours": ours, "peer": peer, "ratio": ratio}))


if __name__ == "__main__":
    main()
