"""Eager vs torch.compile (inductor) for the speedrun's pretraining step, on this machine (issue 24).

Builds the speedrun's model and TrainConfig (`pipeline._train_config`, the `cpu` preset with the
speedrun's 16 x 128 windows and a 4,096-token vocabulary) and runs the real trainer (`train`) on the
same random token batches in each arm, alternating arms (eager, compile, eager, compile, ...). Per arm
and round: the first step's time (compile included), the median step time after `--warm` steps, and
the per-step losses (the two arms must give close, not bitwise equal, curves).
    python benchmarks/compile_step.py --steps 40 --rounds 2 [--threads 1]
    python benchmarks/compile_step.py --quick   # 8 steps, 1 round
Last line: one JSON object, ours = compiled, peer = eager, ratio `step_speedup` = eager / compiled
seconds per step after the compile (higher is better for compiling).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class TimedBatches:
    """Fixed random (x, y) batches, the same in every arm; records when each batch is asked for
    (the gap between two asks is one optimizer step when gradient accumulation is 1)."""

    def __init__(self, vocab: int, batch: int, length: int, n: int, seed: int = 0):
        import torch
        g = torch.Generator().manual_seed(seed)
        self.data = [torch.randint(0, vocab, (batch, length + 1), generator=g) for _ in range(n)]
        self.stamps: list[float] = []

    def __iter__(self):
        for t in self.data:
            self.stamps.append(time.perf_counter())
            yield t[:, :-1].contiguous(), t[:, 1:].contiguous()


def run_arm(compile_: bool, steps: int, seed: int = 0) -> dict:
    import torch
    from llmlab.model import Transformer
    from llmlab.speedrun.pipeline import SpeedrunConfig, _train_config
    from llmlab.train.trainer import train

    tok = SimpleNamespace(vocab_size=4096, eos_id=0, pad_id=0)
    with tempfile.TemporaryDirectory() as d:
        cfg = SpeedrunConfig(seed=seed, max_steps=steps, precision="fp32", device="cpu")
        _, model_cfg, tcfg = _train_config(cfg, "cpu", tok, Path(d), 3.0)
        tcfg.torch_compile, tcfg.logging_steps, tcfg.eval_steps, tcfg.disable_tqdm = compile_, 1, 0, True
        tcfg.report_to = ["jsonl"]
        tcfg.peak_flops = 1e12  # no matmul measurement inside the timed loop
        torch.manual_seed(seed)
        model = Transformer(model_cfg)
        data = TimedBatches(model_cfg.vocab_size, tcfg.per_device_train_batch_size, tcfg.max_length, steps + 1, seed)
        t0 = time.perf_counter()
        train(tcfg, model, data, None)
        total = time.perf_counter() - t0
        losses = [json.loads(line)["loss"] for line in open(Path(d) / "train" / "metrics.jsonl")
                  if '"train"' in line]
    st = data.stamps
    gaps = [b - a for a, b in zip(st, st[1:])]
    return {"compile": compile_, "first_step_s": gaps[0], "median_step_s": statistics.median(gaps[5:]),
            "total_s": total, "losses": losses}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="8 steps, 1 round (a smoke run: the compile dominates)")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.rounds = 8, 1
    import torch
    torch.set_num_threads(args.threads)
    rows = []
    for r in range(args.rounds):
        for c in (False, True):
            row = run_arm(c, args.steps)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "losses"}), flush=True)
    eager = [r for r in rows if not r["compile"]]
    comp = [r for r in rows if r["compile"]]
    diffs = [abs(a - b) for a, b in zip(eager[0]["losses"], comp[0]["losses"])]
    out = {"threads": args.threads, "steps": args.steps,
           "eager_step_s": statistics.median(r["median_step_s"] for r in eager),
           "compile_step_s": statistics.median(r["median_step_s"] for r in comp),
           "compile_first_step_s": statistics.median(r["first_step_s"] for r in comp),
           "max_loss_diff": max(diffs), "last_loss": [eager[0]["losses"][-1], comp[0]["losses"][-1]]}
    out["speedup"] = out["eager_step_s"] / out["compile_step_s"]
    print(json.dumps({"benchmark": "compile_step",
                      "ours": {"step_s": out["compile_step_s"], "first_step_s": out["compile_first_step_s"]},
                      "peer": {"step_s": out["eager_step_s"]},
                      "ratio": {"step_speedup": out["speedup"]},
                      "threads": args.threads, "steps": args.steps, "max_loss_diff": out["max_loss_diff"]}))
    return out


if __name__ == "__main__":
    main()
