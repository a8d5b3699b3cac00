"""Distributed strategies on 2 gloo processes vs one process, each measurement beside llmlab.calc.

Per mode (DDP, ZeRO-2, FSDP2 = ZeRO-3, Megatron TP, pipeline GPipe/1F1B): tokens/s, peak bytes
allocated per rank during a step (torch.profiler CPU allocation events + the states live before
it), model-state bytes per rank at the optimizer step beside `llmlab.calc.memory`'s prediction,
and the measured pipeline bubble (1 - busy/wall of each stage, busy clocked inside the same step,
median over the timed steps) beside (p-1)/(m+p-1). The pipeline runs a model whose two stages cost
about the same (a small vocabulary, --pp-vocab: the formula assumes equal stages; with the
4096-token LM head on the last stage it was ~3x the first, which idles the first stage beyond the
schedule's bubble). The "peer"
column is one process running the same global batch. Last line: JSON with ratio keys
  zero3_mem          DDP peak / FSDP2 peak per rank (goal >= 1.67)
  calc_mem_accuracy  min over DDP/ZeRO-1/ZeRO-2/FSDP2 of min(pred/measured, measured/pred), model states
  bubble_accuracy    min over GPipe/1F1B of min(pred/measured, measured/pred), pred = the schedule replayed
                     op by op (calc.pipeline.simulate_schedule) from op-level inputs measured in the run:
                     each stage's forward and backward seconds per micro-batch, its runtime gap between
                     ops and the hand-off latency between stages (distributed.pipeline.timeline_inputs)
  bubble_accuracy_overhead   the closed form (calc.pipeline.bubble_fraction_measured) from each stage's
                     busy time per micro-batch, a gloo ping-pong's transfer time and the runtime's
                     overhead per micro-batch on a one-stage pipeline
  bubble_accuracy_no_overhead   the same without the overhead term
  bubble_accuracy_textbook   the same against (p-1)/(m+p-1)
CPU figures: gloo over loopback, one thread per process; the machine may be shared (see docs).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _tp(model_kw: dict, x, y, global_bs: int, seq: int, steps: int) -> dict:
    from llmlab.distributed.measure import live_bytes, peak_bytes
    from llmlab.distributed.tensor_parallel import TensorParallelLM
    from llmlab.model import ModelConfig, Transformer
    torch.manual_seed(0)
    tp = TensorParallelLM(Transformer(ModelConfig(**model_kw)))
    opt = torch.optim.AdamW(tp.parameters(), lr=1e-3)

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
    return {"tokens_per_s": steps * global_bs * seq / (time.perf_counter() - t), "peak_bytes": before + peak}


def _tp_pp(model_kw: dict, global_bs: int, seq: int, steps: int, micro: int, pp_vocab: int,
           tp_too: bool = True) -> dict:
    """TP (unless tp_too is off), then GPipe and 1F1B with each step's in-run stage busy time."""
    import torch.distributed as dist

    from llmlab.distributed.pipeline import p2p_seconds, pipeline_step, schedule_overhead_seconds, split_stages
    from llmlab.distributed.step_probe import global_batch
    from llmlab.model import ModelConfig, Transformer
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = global_batch(model_kw["vocab_size"], global_bs, seq, 0)
    out = {"tp": _tp(model_kw, x, y, global_bs, seq, steps)} if tp_too else {}
    px, py = x % pp_vocab, y % pp_vocab
    for sched in ("gpipe", "1f1b"):
        torch.manual_seed(0)
        pp_kw = {**model_kw, "vocab_size": pp_vocab, "tie_word_embeddings": False}
        stage = split_stages(Transformer(ModelConfig(**pp_kw)), rank, world)
        pipeline_step(stage, rank, world, px, py, micro, sched)  # warm-up (builds the schedule)
        walls, busy, events = [], [], []
        for _ in range(2 * steps):
            stage.clock["events"] = []
            walls.append(pipeline_step(stage, rank, world, px, py, micro, sched)[1])
            busy.append(stage.busy_seconds)
            events.append({"step": stage.clock["step"], "ops": stage.clock["events"]})
        out[sched] = {"busy": busy, "wall": walls, "tokens_per_s": len(walls) * global_bs * seq / sum(walls),
                      "timeline": events}
    out["p2p_s"] = p2p_seconds((global_bs // micro, seq, model_kw["hidden_size"]), rank)  # one activation transfer
    solo = [dist.new_group([r]) for r in range(world)][rank]  # every rank creates every group, in order
    for sched in ("gpipe", "1f1b"):  # the runtime's own cost per micro-batch: the whole model as one stage
        torch.manual_seed(0)
        whole = Transformer(ModelConfig(**{**model_kw, "vocab_size": pp_vocab, "tie_word_embeddings": False}))
        out[sched]["overhead_s"] = schedule_overhead_seconds(whole, px, py, micro, sched, solo)
    return out


def _all(strategies, model_kw, global_bs, seq, steps, micro, pp_vocab=256):
    from llmlab.distributed.step_probe import run_strategies
    if not strategies:  # --only pp
        return _tp_pp(model_kw, global_bs, seq, steps, micro, pp_vocab, tp_too=False)
    res = {r["strategy"]: r for r in run_strategies(strategies, model_kw, global_bs, seq, steps + 2)}
    for r in res.values():
        r.pop("weights")
    if len(strategies) > 1:
        res.update(_tp_pp(model_kw, global_bs, seq, steps, micro, pp_vocab))
    return res


def _timeline(two: dict, sched: str) -> list[dict]:
    """Per rank, the mean over timed steps of each part of a step (ms): F, B, head, gaps, tail
    (llmlab.distributed.pipeline.timeline_summary)."""
    from llmlab.distributed.pipeline import timeline_summary
    out = []
    for k in (0, 1):
        rows = [timeline_summary(e["ops"], *e["step"]) for e in two[k][sched]["timeline"]]
        out.append({key: round(1e3 * statistics.mean(r[key] for r in rows), 2) for key in rows[0] if key != "n"})
    return out


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
    ap.add_argument("--pp-vocab", type=int, default=256, help="the pipeline model's vocabulary (balanced stages)")
    ap.add_argument("--steps", type=int, default=0, help="timed steps (default 8, 3 with --quick; pipeline: twice)")
    ap.add_argument("--timeline", default="", help="write each pipeline step's per-stage events (JSON) here")
    ap.add_argument("--only", choices=["all", "pp"], default="all", help="pp: the pipeline bubble alone (short)")
    args = ap.parse_args()
    from llmlab.calc.pipeline import bubble_fraction, bubble_fraction_measured, measured_bubble, simulate_schedule
    from llmlab.distributed.pipeline import timeline_inputs
    from llmlab.distributed.launch import spawn
    steps = args.steps or (3 if args.quick else 8)
    kw = dict(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
              num_attention_heads=args.heads, max_position_embeddings=args.seq)
    modes = ["ddp", "zero1", "zero2", "fsdp"] if args.only == "all" else []
    two = spawn(_all, 2, modes, kw, args.batch, args.seq, steps, args.micro_batches, args.pp_vocab, timeout=1200)
    ours = {}
    pred = bubble_fraction(2, args.micro_batches)
    acc_b, acc_comm, acc_text, acc_sim = [], [], [], []
    c = two[0]["p2p_s"]
    for s in ("gpipe", "1f1b"):
        per_step = sorted(measured_bubble([two[k][s]["busy"][i] for k in (0, 1)], max(two[k][s]["wall"][i] for k in (0, 1)))
                          for i in range(len(two[0][s]["wall"])))
        meas = statistics.median(per_step)
        t_stage = [statistics.median(two[k][s]["busy"]) / args.micro_batches for k in (0, 1)]
        pred_c = bubble_fraction_measured(t_stage, args.micro_batches, c)
        o = statistics.mean(two[k][s]["overhead_s"] for k in (0, 1))  # measured on a one-stage pipeline
        pred_o = bubble_fraction_measured(t_stage, args.micro_batches, c, overhead_seconds=o)
        ours[s] = {"tokens_per_s": round(two[0][s]["tokens_per_s"]), "bubble": round(meas, 4), "bubble_pred": pred,
                   "bubble_pred_comm": round(pred_c, 4), "micro_ms": [round(1e3 * t, 2) for t in t_stage],
                   "p2p_ms": round(1e3 * c, 3), "overhead_ms": round(1e3 * o, 2),
                   "bubble_pred_overhead": round(pred_o, 4),
                   "bubble_min": round(per_step[0], 4), "bubble_max": round(per_step[-1], 4),
                   "stage_busy_ratio": round(statistics.median(two[1][s]["busy"]) / statistics.median(two[0][s]["busy"]), 3)}
        ours[s]["timeline_ms"] = _timeline(two, s)
        ins = timeline_inputs([two[k][s]["timeline"] for k in (0, 1)])
        pred_s = simulate_schedule(ins["forward_s"], ins["backward_s"], args.micro_batches, s, ins["gap_s"],
                                   ins["handoff_s"])[1]
        ours[s]["bubble_pred_sim"] = round(pred_s, 4)
        ours[s]["sim_inputs_ms"] = {k: [round(1e3 * t, 2) for t in v] if isinstance(v, list) else round(1e3 * v, 2)
                                    for k, v in ins.items()}
        acc_sim.append(min(pred_s / meas, meas / pred_s) if meas > 0 else 0.0)
        acc_b.append(min(pred_o / meas, meas / pred_o) if meas > 0 else 0.0)
        acc_comm.append(min(pred_c / meas, meas / pred_c) if meas > 0 else 0.0)
        acc_text.append(min(pred / meas, meas / pred) if meas > 0 else 0.0)
    if args.timeline:
        with open(args.timeline, "w") as f:
            json.dump({s: [two[k][s]["timeline"] for k in (0, 1)] for s in ("gpipe", "1f1b")}, f)
    if not modes:
        for k, v in ours.items():
            print(f"{k:6s} " + "  ".join(f"{a}={b}" for a, b in v.items()))
        print(json.dumps({"benchmark": "distributed_pp", "ours": ours, "peer": {"bubble": pred},
                          "ratio": {"bubble_accuracy": min(acc_sim), "bubble_accuracy_overhead": min(acc_b),
                                    "bubble_accuracy_no_overhead": min(acc_comm),
                                    "bubble_accuracy_textbook": min(acc_text)}}))
        return
    one = spawn(_all, 1, ["ddp"], kw, args.batch, args.seq, steps, args.micro_batches)[0]["ddp"]
    for m in modes:
        r0, r1 = two[0][m], two[1][m]
        ours[m] = {"tokens_per_s": round(r0["tokens_per_s"]), "peak_mib_per_rank": max(r0["peak_bytes"], r1["peak_bytes"]) / 2**20,
                   "state_mib": r0["state_bytes"] / 2**20, "state_pred_mib": r0["state_pred"] / 2**20,
                   "comm_mib": r0["comm_bytes"] / 2**20, "comm_pred_mib": r0["comm_pred"] / 2**20}
    ours["tp"] = {"tokens_per_s": round(two[0]["tp"]["tokens_per_s"]),
                  "peak_mib_per_rank": max(two[k]["tp"]["peak_bytes"] for k in (0, 1)) / 2**20}
    acc_m = min(min(ours[m]["state_pred_mib"] / ours[m]["state_mib"], ours[m]["state_mib"] / ours[m]["state_pred_mib"])
                for m in modes)
    for k, v in ours.items():
        print(f"{k:6s} " + "  ".join(f"{a}={b:.3f}" if isinstance(b, float) else f"{a}={b}" for a, b in v.items()))
    peer = {"tokens_per_s": round(one["tokens_per_s"]), "peak_mib": one["peak_bytes"] / 2**20,
            "state_mib": one["state_bytes"] / 2**20}
    print(f"one process: {peer}")
    print(json.dumps({"benchmark": "distributed", "ours": ours, "peer": peer, "ratio": {
        "zero3_mem": ours["ddp"]["peak_mib_per_rank"] / ours["fsdp"]["peak_mib_per_rank"],
        "calc_mem_accuracy": acc_m, "bubble_accuracy": min(acc_sim), "bubble_accuracy_overhead": min(acc_b),
        "bubble_accuracy_no_overhead": min(acc_comm),
                                    "bubble_accuracy_textbook": min(acc_text)}}))


if __name__ == "__main__":
    main()
