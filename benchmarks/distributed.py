"""Distributed strategies on 2 gloo processes vs one process, each measurement beside llmlab.calc.

Per mode (DDP, ZeRO-2, FSDP2 = ZeRO-3, Megatron TP, pipeline GPipe/1F1B): tokens/s, peak bytes
allocated per rank during a step (torch.profiler CPU allocation events + the states live before
it), model-state bytes per rank at the optimizer step beside `llmlab.calc.memory`'s prediction,
and the measured pipeline bubble (1 - busy/wall of each stage) beside (p-1)/(m+p-1). The "peer"
column is one process running the same global batch. Last line: JSON with ratio keys
  zero3_mem          DDP peak / FSDP2 peak per rank (goal >= 1.67)
  calc_mem_accuracy  min over DDP/ZeRO-1/ZeRO-2/FSDP2 of min(pred/measured, measured/pred), model states
  bubble_accuracy    min over GPipe/1F1B of min(pred/measured, measured/pred)
CPU figures: gloo over loopback, one thread per process; the machine may be shared (see docs).
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def _tp_pp(model_kw: dict, global_bs: int, seq: int, steps: int, micro: int) -> dict:
    import torch.distributed as dist

    from llmlab.distributed.measure import live_bytes, peak_bytes
    from llmlab.distributed.pipeline import pipeline_step, split_stages, stage_busy_seconds
    from llmlab.distributed.step_probe import global_batch
    from llmlab.distributed.tensor_parallel import TensorParallelLM
    from llmlab.model import ModelConfig, Transformer
    rank, world = dist.get_rank(), dist.get_world_size()
    out = {}
    torch.manual_seed(0)
    tp = TensorParallelLM(Transformer(ModelConfig(**model_kw)))
    opt = torch.optim.AdamW(tp.parameters(), lr=1e-3)
    x, y = global_batch(model_kw["vocab_size"], global_bs, seq, 0)

    def tp_step():
        tp(x, y).backward()
        opt.step()
        opt.zero_grad()
    tp_step()
    before = live_bytes(tp.parameters(), [v for s in opt.state.values() for v in s.values() if v.dim() > 0])
    peak, _ = peak_bytes(tp_step)
    t = time.perf_counter()
    for _ in range(steps):
        tp_step()
    out["tp"] = {"tokens_per_s": steps * global_bs * seq / (time.perf_counter() - t), "peak_bytes": before + peak}
    for sched in ("gpipe", "1f1b"):
        torch.manual_seed(0)
        stage = split_stages(Transformer(ModelConfig(**{**model_kw, "tie_word_embeddings": False})), rank, world)
        pipeline_step(stage, rank, world, x, y, micro, sched)  # warm-up
        walls = []
        for _ in range(steps):
            walls.append(pipeline_step(stage, rank, world, x, y, micro, sched)[1])
        mb = global_bs // micro
        busy = micro * stage_busy_seconds(stage, x[:mb], y[:mb], model_kw["hidden_size"])
        out[sched] = {"busy": busy, "wall": min(walls), "tokens_per_s": steps * global_bs * seq / sum(walls)}
    return out


def _all(strategies, model_kw, global_bs, seq, steps, micro):
    from llmlab.distributed.step_probe import run_strategies
    res = {r["strategy"]: r for r in run_strategies(strategies, model_kw, global_bs, seq, steps + 2)}
    for r in res.values():
        r.pop("weights")
    if len(strategies) > 1:
        res.update(_tp_pp(model_kw, global_bs, seq, steps, micro))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="3 timed steps (about a minute on 2 idle cores)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4, help="global batch (sequences)")
    ap.add_argument("--micro-batches", type=int, default=4)
    ap.add_argument("--steps", type=int, default=0, help="timed steps (default 8, 3 with --quick)")
    args = ap.parse_args()
    from llmlab.calc.pipeline import bubble_fraction, measured_bubble
    from llmlab.distributed.launch import spawn
    steps = args.steps or (3 if args.quick else 8)
    kw = dict(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
              num_attention_heads=args.heads, max_position_embeddings=args.seq)
    one = spawn(_all, 1, ["ddp"], kw, args.batch, args.seq, steps, args.micro_batches)[0]["ddp"]
    modes = ["ddp", "zero1", "zero2", "fsdp"]
    two = spawn(_all, 2, modes, kw, args.batch, args.seq, steps, args.micro_batches)
    ours = {}
    for m in modes:
        r0, r1 = two[0][m], two[1][m]
        ours[m] = {"tokens_per_s": round(r0["tokens_per_s"]), "peak_mib_per_rank": max(r0["peak_bytes"], r1["peak_bytes"]) / 2**20,
                   "state_mib": r0["state_bytes"] / 2**20, "state_pred_mib": r0["state_pred"] / 2**20,
                   "comm_mib": r0["comm_bytes"] / 2**20, "comm_pred_mib": r0["comm_pred"] / 2**20}
    ours["tp"] = {"tokens_per_s": round(two[0]["tp"]["tokens_per_s"]),
                  "peak_mib_per_rank": max(two[k]["tp"]["peak_bytes"] for k in (0, 1)) / 2**20}
    pred = bubble_fraction(2, args.micro_batches)
    acc_b = []
    for s in ("gpipe", "1f1b"):
        meas = measured_bubble([two[k][s]["busy"] for k in (0, 1)], max(two[k][s]["wall"] for k in (0, 1)))
        ours[s] = {"tokens_per_s": round(two[0][s]["tokens_per_s"]), "bubble": round(meas, 4), "bubble_pred": pred}
        acc_b.append(min(pred / meas, meas / pred) if meas > 0 else 0.0)
    acc_m = min(min(ours[m]["state_pred_mib"] / ours[m]["state_mib"], ours[m]["state_mib"] / ours[m]["state_pred_mib"])
                for m in modes)
    for k, v in ours.items():
        print(f"{k:6s} " + "  ".join(f"{a}={b:.3f}" if isinstance(b, float) else f"{a}={b}" for a, b in v.items()))
    peer = {"tokens_per_s": round(one["tokens_per_s"]), "peak_mib": one["peak_bytes"] / 2**20,
            "state_mib": one["state_bytes"] / 2**20}
    print(f"one process: {peer}")
    print(json.dumps({"benchmark": "distributed", "ours": ours, "peer": peer, "ratio": {
        "zero3_mem": ours["ddp"]["peak_mib_per_rank"] / ours["fsdp"]["peak_mib_per_rank"],
        "calc_mem_accuracy": acc_m, "bubble_accuracy": min(acc_b)}}))


if __name__ == "__main__":
    main()
