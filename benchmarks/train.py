"""Training throughput: our Transformer + trainer step vs transformers' LlamaForCausalLM.

Same config, same initial weights, same batch, same AdamW (foreach): one optimizer step = forward,
loss, backward, clip, step. Ours uses the fused chunked LM-head + cross-entropy (llmlab.train.loss);
transformers computes full logits and its own shifted loss. fp32 (the CPU default) and bf16
autocast (labelled: bf16 matmuls are slow on most CPUs). MFU = model FLOP/s (6N + 12LHQT per token)
over a matmul ceiling measured in this same process. Both sides alternate; medians of the repeats.
On CPU our step also runs a third time with llmlab.model.linear's oneDNN path off, in the same
alternation (`ours.train_tok_s_without_onednn`, a reference column: how much of the ratio that
path is). Last line: JSON with ratio key train_tok_s (fp32, ours / transformers).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="3 repeats of a 4 x 128-token batch, fp32 only on CPU (< 1 min on 2 idle cores)")
    ap.add_argument("--depth", type=int, default=4, help="width 64*depth, depth layers (the sizing dial)")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq", type=int, default=None, help="default 256 (128 with --quick)")
    ap.add_argument("--batch", type=int, default=None, help="default 8 (4 with --quick)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--repeats", type=int, default=0, help="timed steps per side (default 15 on CPU, 3 with --quick)")
    args = ap.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    from llmlab.device import resolve_device, setup_threads
    from llmlab.model import Transformer, flops_per_token
    from llmlab.model.hf import config_to_hf
    from llmlab.train.loss import linear_cross_entropy
    from llmlab.train.mfu import measure_matmul_flops
    from llmlab.train.sizing import size_model

    threads = setup_threads()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    args.seq = args.seq or (128 if args.quick and not cuda else 256)
    args.batch = args.batch or (4 if args.quick and not cuda else 8)
    if args.quick and not cuda:
        args.no_bf16 = True  # CPU bf16 is emulated and slow: full mode only
    repeats = args.repeats or ((3 if args.quick else 15) if not cuda else 10)
    steps = 1 if not cuda else 5  # optimizer steps per timed repeat
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    cfg = size_model(args.depth, args.vocab, args.seq).model
    torch.manual_seed(0)
    ours = Transformer(cfg).to(device).train()
    hf_cfg = {k: v for k, v in config_to_hf(cfg).items() if k not in ("architectures", "model_type", "torch_dtype")}
    peer = LlamaForCausalLM(LlamaConfig(**hf_cfg, attn_implementation="sdpa")).to(device).train()
    peer.load_state_dict(ours.state_dict(), strict=False)
    peer.tie_weights()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g).to(device)
    inp, tgt = x[:, :-1], x[:, 1:]

    def make(model, loss_fn):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
        params = list(model.parameters())

        def step(dtype):
            ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else torch.autocast(device.type, enabled=False)
            with ctx:
                loss = loss_fn()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss
        return step

    step_ours = make(ours, lambda: linear_cross_entropy(ours(inp, return_hidden=True), ours.lm_head.weight, tgt))
    step_peer = make(peer, lambda: peer(input_ids=inp, labels=inp).loss)  # HF shifts labels itself
    from llmlab import device as dnn

    def step_ours_mkl(dt):  # the same step with the oneDNN path off (A/B; llmlab.device decides)
        saved, dnn._ONEDNN[0] = dnn._ONEDNN[0], False
        try:
            return step_ours(dt)
        finally:
            dnn._ONEDNN[0] = saved
    ab = dnn.use_onednn() and not cuda

    with torch.no_grad():  # same weights, same loss (before any step)
        lo = linear_cross_entropy(ours(inp, return_hidden=True), ours.lm_head.weight, tgt).item()
        lp = peer(input_ids=x, labels=x).loss.item()
    assert abs(lo - lp) < 1e-3, (lo, lp)

    tokens = args.batch * args.seq * steps
    fpt = flops_per_token(cfg, args.seq)
    results = {}
    dtypes = [("fp32", None)] + ([] if args.no_bf16 else [("bf16", torch.bfloat16)])
    for name, dt in dtypes:
        ceiling = measure_matmul_flops(device, dt or torch.float32, seconds=1.0)
        sides = [("ours", step_ours), ("peer", step_peer)] + ([("ours_mkl", step_ours_mkl)] if ab and dt is None else [])
        times = {side: [] for side, _ in sides}
        reps = repeats if (dt is None or cuda) else max(2, repeats // 2)
        for _, fn in sides:  # warm-up
            fn(dt)
        sync()
        for _ in range(reps):
            for side, fn in sides:
                t = time.perf_counter()
                for _ in range(steps):
                    fn(dt)
                sync()
                times[side].append(time.perf_counter() - t)
        for side in ("ours", "peer"):
            tps = tokens / statistics.median(times[side])
            results.setdefault(side, {})[f"train_tok_s{'' if dt is None else '_bf16'}"] = tps
            if dt is None or cuda:  # a CPU bf16 "ceiling" (emulated 1024^2 matmul) is not a ceiling
                results[side][f"mfu{'' if dt is None else '_bf16'}"] = tps * fpt / ceiling
        # the ceiling is the best of a measurement before and after the timed steps (a shared
        # machine's load changes during the run; MFU > 100% would mean the ceiling was measured low)
        ceiling = max(ceiling, measure_matmul_flops(device, dt or torch.float32, seconds=1.0))
        for side in ("ours", "peer"):
            if f"mfu{'' if dt is None else '_bf16'}" in results[side]:
                tps = results[side][f"train_tok_s{'' if dt is None else '_bf16'}"]
                results[side][f"mfu{'' if dt is None else '_bf16'}"] = tps * fpt / ceiling
        results.setdefault("ceiling", {})[name] = ceiling
        if "ours_mkl" in times:  # reference column, not a ratio: our step without oneDNN
            results["ours"]["train_tok_s_without_onednn"] = tokens / statistics.median(times["ours_mkl"])
        # best-of-repeats too: on a shared machine the fastest repeat is the least disturbed one
        results.setdefault("best_ratio", {})[name] = min(times["peer"]) / min(times["ours"])

    res = {"benchmark": "train", "ours": results["ours"], "peer": results["peer"],
           "ratio": {k: results["ours"][k] / results["peer"][k] for k in results["ours"] if k in results["peer"] and k.startswith("train_tok_s")},
           "config": {"device": str(device), "threads": threads, "depth": args.depth, "hidden": cfg.hidden_size,
                      "layers": cfg.num_hidden_layers, "vocab": args.vocab, "seq": args.seq, "batch": args.batch,
                      "params": ours.num_params(), "flops_per_token": fpt, "repeats": repeats,
                      "matmul_ceiling_flops": results["ceiling"], "best_of_repeats_ratio": results["best_ratio"], "peer_name": "transformers LlamaForCausalLM (sdpa)",
                      "note": "bf16 on CPU is slow (emulated on most CPUs; no MFU reported for it); compare fp32"}}
    for k in res["ratio"]:
        print(f"{k:18s} ours {res['ours'][k]:10.1f}   transformers {res['peer'][k]:10.1f}   ratio {res['ratio'][k]:.2f}")
    print(f"MFU (fp32)         ours {res['ours']['mfu']:.1%}   transformers {res['peer']['mfu']:.1%}")
    if "train_tok_s_without_onednn" in res["ours"]:
        print(f"ours with llmlab.model.linear's oneDNN path off: {res['ours']['train_tok_s_without_onednn']:.1f} tok/s")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
