"""CLIP vs SigLIP across batch sizes: the SigLIP paper's small-batch claim, tested.

Zhai et al. 2023 (Fig. 2, Table 3) report that the sigmoid loss beats the softmax (InfoNCE) loss
most clearly at small batch sizes, and that the gap closes as the batch grows. Here both losses
train the same tiny dual encoder (a `llmlab mm train` config) at several batch sizes and seeds,
with an **equal number of training pairs** per run (steps = examples / batch; warmup is a fixed
number of pairs too), the same peak learning rate and cosine schedule. Each run is scored on the
config's *test* split: zero-shot accuracy with the held-out prompt ensemble (digits, easy-vqa
shapes) and recall@1. Nothing is chosen on these figures.

Rows are appended to `--out` (JSONL) as they finish; rerunning skips rows already there, so an
interrupted study resumes. Last line: one JSON object with the per-cell medians and `ratio`
siglip_vs_clip@B (SigLIP median / CLIP median at batch B; the claim says >= 1 at small B).

    python benchmarks/multimodal_batch.py --batches 16,32,64,128 --seeds 0,1,2 --examples 32000
    python benchmarks/multimodal_batch.py --quick          # 2 batch sizes, 1 seed, 640 pairs
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

CONFIG = Path(__file__).resolve().parents[1] / "configs/mm_clip_digits.yaml"
WARMUP_PAIRS = 1280  # 20 steps of 64: the config's warmup, kept equal in pairs at every batch size


def run_one(cfg, model_name: str, batch: int, seed: int, examples: int) -> dict:
    from llmlab.multimodal.train import ContrastiveTrainer, build_model, evaluate_contrastive, load_split
    steps = max(1, examples // batch)
    c = replace(cfg, model=model_name, per_device_train_batch_size=batch, seed=seed, max_steps=steps,
                warmup_steps=max(1, WARMUP_PAIRS // batch))
    train, test = load_split(c, "train"), load_split(c, "test")
    model = build_model(c)
    trainer = ContrastiveTrainer(model, model.tokenize, train, c)
    t0 = time.perf_counter()
    trainer.run(steps)
    secs = time.perf_counter() - t0
    with torch.no_grad():
        m = evaluate_contrastive(model, model.tokenize, test)
    return {"model": model_name, "batch": batch, "seed": seed, "steps": steps, "pairs": steps * batch,
            "dataset": c.dataset, "train_seconds": round(secs, 1),
            "final_loss": round(sum(trainer.losses[-20:]) / len(trainer.losses[-20:]), 4),
            **{k: round(v, 4) for k, v in m.items()}}


def summarize(rows: list[dict], metric: str) -> dict:
    cells: dict[str, list[float]] = {}
    for r in rows:
        cells.setdefault(f"{r['model']}@{r['batch']}", []).append(r[metric])
    return {k: round(statistics.median(v), 4) for k, v in sorted(cells.items())}


def main() -> None:
    from llmlab.config import load_config
    from llmlab.multimodal.train import ContrastiveConfig
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(CONFIG))
    ap.add_argument("--batches", default="16,32,64,128")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--models", default="clip,siglip")
    ap.add_argument("--examples", type=int, default=32000, help="training pairs per run (equal for every batch size)")
    ap.add_argument("--out", default="runs/mm_batch_study.jsonl")
    ap.add_argument("--quick", action="store_true", help="smoke run: batches 16,64, seed 0, 640 pairs")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the config (e.g. dataset=easy_vqa)")
    args = ap.parse_args()
    if args.quick:
        args.batches, args.seeds, args.examples = "16,64", "0", 640
    torch.set_num_threads(1)
    cfg = load_config(ContrastiveConfig, [args.config, *args.overrides])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.is_file() else []
    done = {(r["model"], r["batch"], r["seed"], r["pairs"], r["dataset"]) for r in rows}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for batch in [int(b) for b in args.batches.split(",")]:
            for name in args.models.split(","):
                pairs = max(1, args.examples // batch) * batch
                if (name, batch, seed, pairs, cfg.dataset) in done:
                    continue
                row = run_one(cfg, name, batch, seed, args.examples)
                rows.append(row)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), file=sys.stderr, flush=True)
    keep: dict[tuple, dict] = {}  # the first row of each cell and seed (parallel invocations may repeat one)
    for r in rows:
        if r["dataset"] == cfg.dataset and r["pairs"] == max(1, args.examples // r["batch"]) * r["batch"]:
            keep.setdefault((r["model"], r["batch"], r["seed"]), r)
    rows = list(keep.values())
    metric = "zero_shot_acc" if rows and "zero_shot_acc" in rows[0] else "i2t_r@1"
    median = summarize(rows, metric)
    # the claim under test (Zhai et al. 2023): SigLIP >= CLIP at small batch, i.e. this ratio >= 1 there
    ratio = {f"siglip_vs_clip@{b}": round(median[f"siglip@{b}"] / median[f"clip@{b}"], 4)
             for b in sorted({r["batch"] for r in rows})
             if median.get(f"clip@{b}") and f"siglip@{b}" in median}
    print(json.dumps({"benchmark": "multimodal_batch", "dataset": cfg.dataset, "examples": args.examples,
                      "metric": metric, "median": median, "median_i2t_r@1": summarize(rows, "i2t_r@1"),
                      "ratio": ratio}))


if __name__ == "__main__":
    main()
