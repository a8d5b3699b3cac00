"""CLIP training: llmlab.multimodal vs open_clip with the same tiny configuration and data.

    python benchmarks/multimodal.py            # 600 steps x 64 pairs, seeds 0,1,2
    python benchmarks/multimodal.py --quick    # 120 steps x 32 pairs, seed 0 (about a minute on a free core)
    python benchmarks/multimodal.py --same_init  # ours starts from open_clip's initial weights
    python benchmarks/multimodal.py --steps 300 --seeds 0-47 --per_seed_dir runs/zs14  # session 14's run
    python benchmarks/multimodal.py --steps 300 --seeds 0-47 --per_seed_dir runs/zs15/s300 --against runs/zs14/s300

Data: scikit-learn digits (8x8, repeated to 3 channels because open_clip's patch embedding takes RGB),
its seeded 70/30 split; captions from training templates ("a handwritten digit three", ...).
Both models: ViT (patch 2, width 64, 2 layers, 4 heads, mean pooling; CLIP's LayerNorm before the
blocks and no patch-embedding bias, as open_clip's `ln_pre`/`conv1`), causal byte-level text
Transformer (context 48, width 64, 2 layers, 4 heads, end-of-text pooling), embed_dim 64, and the
same loop (AdamW, cosine schedule, same batches and captions from the same seed, symmetric
InfoNCE). Steps alternate between the two in chunks; clip_img_s is the median of the per-chunk
images/s. clip_zero_shot: held-out test digits, prompt ensemble of templates never used in
training, both models scored by the same code. Last line one JSON object, ratios ours / open_clip
(higher is better). `ratio.clip_zero_shot` is the ratio of the mean zero-shot accuracies over the
seeds (session 14: the accuracy swings 0.6-0.9 with the initial draw, so the mean over many seeds is
the estimate of each library's expected accuracy; `zero_shot_se` is its delta-method standard error
over seeds, `zero_shot_boot95` its 95 % bootstrap interval over seeds). `ratio.clip_img_s` is the
median per-seed ratio (the two sides are timed in alternating chunks within a seed, so the per-seed
ratio cancels the load). `ratio_median_per_seed` and
`ratio_of_means` give both statistics for both keys; `ours`/`peer` are medians over seeds.
`--per_seed_dir DIR` writes DIR/seed_S.json after each seed and reuses it on a rerun (a stop loses
nothing; rerunning the same command with every seed done only prints the summary). `--against DIR`
adds each side's seed-by-seed difference from another run of the same seeds (e.g. a changed init).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmlab.multimodal.clip import TextConfig  # noqa: E402
from llmlab.multimodal.evaluate import DIGIT_EVAL_TEMPLATES, zero_shot_accuracy  # noqa: E402
from llmlab.multimodal.reference import import_references, open_clip_to_ours  # noqa: E402
from llmlab.multimodal.text import VOCAB_SIZE  # noqa: E402
from llmlab.multimodal.train import ContrastiveConfig, ContrastiveTrainer, build_model, load_split  # noqa: E402
from llmlab.multimodal.vit import ViTConfig  # noqa: E402

WIDTH, LAYERS, HEADS, CTX, EMBED = 64, 2, 4, 48, 64


def rgb(ds):
    ds.images = ds.images.repeat(1, 3, 1, 1)
    return ds


def peer_model(open_clip, seed: int):
    torch.manual_seed(seed)
    vision = dict(image_size=8, patch_size=2, width=WIDTH, layers=LAYERS, head_width=WIDTH // HEADS, mlp_ratio=4.0,
                  pool_type="avg")
    text = dict(context_length=CTX, vocab_size=VOCAB_SIZE, width=WIDTH, heads=HEADS, layers=LAYERS)
    return open_clip.CLIP(embed_dim=EMBED, vision_cfg=vision, text_cfg=text)


def bench_config(seed: int, steps: int, batch: int, validation: int = 0):
    """The tiny CLIP both libraries train, and its (train, test) digits as RGB; with validation=N the
    last N training digits are held out and returned in place of the test split."""
    cfg = ContrastiveConfig(model="clip", dataset="digits", max_steps=steps, per_device_train_batch_size=batch,
                            seed=seed, vision=ViTConfig(image_size=8, patch_size=2, in_chans=1, embed_dim=WIDTH,
                                                        depth=LAYERS, num_heads=HEADS, pool="mean", pre_norm=True),
                            text=TextConfig(context_length=CTX, width=WIDTH, depth=LAYERS, num_heads=HEADS),
                            embed_dim=EMBED, validation=validation)
    train, test = rgb(load_split(cfg, "train")), rgb(load_split(cfg, "test"))
    cfg.vision.in_chans = 3
    return cfg, train, test


def run_seed(open_clip, seed: int, steps: int, batch: int, chunk: int, same_init: bool = False) -> tuple[dict, dict]:
    cfg, train, test = bench_config(seed, steps, batch)
    ours = build_model(cfg)
    peer = peer_model(open_clip, seed)
    if same_init:  # isolate the implementations: both start from open_clip's initial weights
        ours.load_state_dict(open_clip_to_ours(peer.state_dict(), LAYERS), strict=True)
    tokenize = ours.tokenize  # the same byte ids for both (pad 0, end-of-text 256 = argmax)
    trainers = {"ours": ContrastiveTrainer(ours, tokenize, train, cfg),
                "peer": ContrastiveTrainer(peer, tokenize, train, cfg)}
    speeds: dict[str, list[float]] = {"ours": [], "peer": []}
    order = ["ours", "peer"] if seed % 2 == 0 else ["peer", "ours"]
    done = 0
    while done < steps:
        n = min(chunk, steps - done)
        for name in order:
            seen, secs = trainers[name].run(n)
            if done > 0:  # the first chunk warms up allocators and autograd caches
                speeds[name].append(seen / secs)
        done += n
        order.reverse()
    out = {}
    for name, model in (("ours", ours), ("peer", peer)):
        model.eval()
        acc = zero_shot_accuracy(model, tokenize, test.images, test.labels, test.class_names, DIGIT_EVAL_TEMPLATES)
        out[name] = {"clip_img_s": statistics.median(speeds[name]), "clip_zero_shot": acc,
                     "final_loss": statistics.mean(trainers[name].losses[-10:])}
    return out["ours"], out["peer"]


def parse_seeds(text: str) -> list[int]:
    """"0,1,2" or "0-47" (inclusive) or a mix: "0-3,9"."""
    seeds = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return seeds


def ratio_of_means_se(ours: list[float], peer: list[float]) -> tuple[float, float]:
    """R = mean(ours) / mean(peer) over paired seeds and its delta-method standard error,
    sd(ours_i - R peer_i) / (sqrt(n) mean(peer)) (nan for one seed)."""
    n, mp = len(ours), statistics.fmean(peer)
    r = statistics.fmean(ours) / mp
    se = statistics.stdev([o - r * p for o, p in zip(ours, peer)]) / (n ** 0.5 * mp) if n > 1 else float("nan")
    return r, se


def bootstrap_ratio(ours: list[float], peer: list[float], draws: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the ratio of means, resampling seeds (pairs) with replacement."""
    rng, n = random.Random(seed), len(ours)
    stats = []
    for _ in range(draws):
        pick = [rng.randrange(n) for _ in range(n)]
        stats.append(sum(ours[i] for i in pick) / sum(peer[i] for i in pick))
    stats.sort()
    return stats[int(0.025 * draws)], stats[int(0.975 * draws) - 1]


def paired_against(rows: dict[str, list[dict]], other: dict[str, list[dict]]) -> dict:
    """Seed-by-seed zero-shot differences of this run from another run of the same seeds (`--against`):
    each side's mean difference with its s.e. over seeds, and how many seeds give exactly the same accuracy."""
    out = {}
    for side in ("ours", "peer"):
        d = [a["clip_zero_shot"] - b["clip_zero_shot"] for a, b in zip(rows[side], other[side])]
        se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan")
        out[side] = {"mean_diff": round(statistics.fmean(d), 4), "diff_se": round(se, 4),
                     "same": sum(x == 0 for x in d), "ahead": sum(x > 0 for x in d)}
    return out


def summarise(rows: dict[str, list[dict]]) -> dict:
    """The summary fields of the last JSON line from per-seed rows {"ours": [...], "peer": [...]}."""
    med = {side: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for side, rs in rows.items()}
    keys = ("clip_img_s", "clip_zero_shot")
    per_seed = {k: [o[k] / p[k] if p[k] else float("nan") for o, p in zip(rows["ours"], rows["peer"])] for k in keys}
    by_median = {k: statistics.median(per_seed[k]) for k in keys}
    of_means = {k: ratio_of_means_se([o[k] for o in rows["ours"]], [p[k] for p in rows["peer"]]) for k in keys}
    boot = bootstrap_ratio([o["clip_zero_shot"] for o in rows["ours"]], [p["clip_zero_shot"] for p in rows["peer"]])
    return {"ours": {k: round(v, 4) for k, v in med["ours"].items()},
            "peer": {k: round(v, 4) for k, v in med["peer"].items()},
            "ratio_per_seed": {k: [round(v, 4) for v in vs] for k, vs in per_seed.items()},
            "ratio_median_per_seed": {k: round(v, 4) for k, v in by_median.items()},
            "ratio_of_means": {k: round(v[0], 4) for k, v in of_means.items()},
            "zero_shot_se": round(of_means["clip_zero_shot"][1], 4),
            "zero_shot_boot95": [round(v, 4) for v in boot],
            "ratio": {"clip_img_s": round(by_median["clip_img_s"], 4),
                      "clip_zero_shot": round(of_means["clip_zero_shot"][0], 4)}}


def markdown_table(seeds: list[int], rows: dict[str, list[dict]]) -> str:
    """The per-seed table for docs: zero-shot ours / open_clip, its ratio, final losses, images/s ratio."""
    out = ["| seed | zero-shot ours / open_clip | ratio | final loss ours / open_clip | images/s ratio |",
           "|---:|---|---:|---|---:|"]
    for seed, o, p in zip(seeds, rows["ours"], rows["peer"]):
        out.append(f"| {seed} | {o['clip_zero_shot']:.3f} / {p['clip_zero_shot']:.3f} | "
                   f"{o['clip_zero_shot'] / p['clip_zero_shot']:.3f} | {o['final_loss']:.3f} / {p['final_loss']:.3f} | "
                   f"{o['clip_img_s'] / p['clip_img_s']:.3f} |")
    return "\n".join(out)


def saved_seed(path: Path, cfg: dict) -> tuple[dict, dict]:
    saved = json.loads(path.read_text())
    if saved["config"] != cfg:
        raise SystemExit(f"{path} was run with {saved['config']}, not {cfg}; use another --per_seed_dir")
    return saved["ours"], saved["peer"]


def seed_rows(open_clip, seed: int, args, steps: int, batch: int) -> tuple[dict, dict]:
    """One seed's (ours, peer), read from --per_seed_dir when already there, else run (and saved)."""
    path = Path(args.per_seed_dir) / f"seed_{seed}.json" if args.per_seed_dir else None
    cfg = {"steps": steps, "batch": batch, "same_init": args.same_init}
    if path is not None and path.exists():
        return saved_seed(path, cfg)
    o, p = run_seed(open_clip, seed, steps, batch, chunk=20, same_init=args.same_init)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"seed": seed, "config": cfg, "ours": o, "peer": p}) + "\n")
    return o, p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--seeds", default="", help='"0,1,2" or "0-47" (inclusive)')
    ap.add_argument("--same_init", action="store_true",
                    help="ours starts from open_clip's initial weights (each library's own init otherwise)")
    ap.add_argument("--per_seed_dir", default="", help="save each seed's figures as DIR/seed_S.json; reuse them")
    ap.add_argument("--table", action="store_true", help="print the per-seed markdown table before the JSON line")
    ap.add_argument("--against", default="", help="another run's --per_seed_dir with the same seeds and protocol: "
                    "add each side's seed-by-seed zero-shot difference from it (its files must all be there)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps = args.steps or (120 if args.quick else 600)
    batch = 32 if args.quick else 64
    seeds = parse_seeds(args.seeds) if args.seeds else ([0] if args.quick else [0, 1, 2])
    _timm, open_clip = import_references()
    rows = {"ours": [], "peer": []}
    for seed in seeds:
        o, p = seed_rows(open_clip, seed, args, steps, batch)
        rows["ours"].append(o)
        rows["peer"].append(p)
        print(f"seed {seed}: ours {o}  open_clip {p}", file=sys.stderr, flush=True)
    summary = summarise(rows)
    if args.against:
        cfg = {"steps": steps, "batch": batch, "same_init": args.same_init}
        pairs = [saved_seed(Path(args.against) / f"seed_{seed}.json", cfg) for seed in seeds]
        summary["against"] = {"dir": args.against, **paired_against(rows, {"ours": [o for o, _ in pairs],
                                                                            "peer": [p for _, p in pairs]})}
    if args.table:
        print(markdown_table(seeds, rows))
    print(f"{'metric':<16}{'ours':>12}{'open_clip':>12}   (medians over seeds)")
    for k in summary["ours"]:
        print(f"{k:<16}{summary['ours'][k]:>12.4f}{summary['peer'][k]:>12.4f}")
    print(json.dumps({"benchmark": "multimodal", "steps": steps, "batch": batch, "seeds": seeds,
                      "same_init": args.same_init, **summary}))


if __name__ == "__main__":
    main()
