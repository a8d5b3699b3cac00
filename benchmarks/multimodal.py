"""CLIP training: llmlab.multimodal vs open_clip with the same tiny configuration and data.

    python benchmarks/multimodal.py            # 600 steps x 64 pairs, seeds 0,1,2
    python benchmarks/multimodal.py --quick    # 120 steps x 32 pairs, seed 0 (about a minute on a free core)
    python benchmarks/multimodal.py --same_init  # ours starts from open_clip's initial weights

Data: scikit-learn digits (8x8, repeated to 3 channels because open_clip's patch embedding takes RGB),
its seeded 70/30 split; captions from training templates ("a handwritten digit three", ...).
Both models: ViT (patch 2, width 64, 2 layers, 4 heads, mean pooling; CLIP's LayerNorm before the
blocks and no patch-embedding bias, as open_clip's `ln_pre`/`conv1`), causal byte-level text
Transformer (context 48, width 64, 2 layers, 4 heads, end-of-text pooling), embed_dim 64, and the
same loop (AdamW, cosine schedule, same batches and captions from the same seed, symmetric
InfoNCE). Steps alternate between the two in chunks; clip_img_s is the median of the per-chunk
images/s. clip_zero_shot: held-out test digits, prompt ensemble of templates never used in
training, both models scored by the same code. Medians over seeds; last line one JSON object,
ratios ours / open_clip (higher is better). The seeds pair the two sides (same batches, captions
and order), so `ratio` is the median over seeds of the per-seed ratio; `ratio_of_medians` divides
the two medians instead.
"""
from __future__ import annotations

import argparse
import json
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


def run_seed(open_clip, seed: int, steps: int, batch: int, chunk: int, same_init: bool = False) -> tuple[dict, dict]:
    cfg = ContrastiveConfig(model="clip", dataset="digits", max_steps=steps, per_device_train_batch_size=batch,
                            seed=seed, vision=ViTConfig(image_size=8, patch_size=2, in_chans=1, embed_dim=WIDTH,
                                                        depth=LAYERS, num_heads=HEADS, pool="mean", pre_norm=True),
                            text=TextConfig(context_length=CTX, width=WIDTH, depth=LAYERS, num_heads=HEADS),
                            embed_dim=EMBED)
    train, test = rgb(load_split(cfg, "train")), rgb(load_split(cfg, "test"))
    cfg.vision.in_chans = 3
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--seeds", default="")
    ap.add_argument("--same_init", action="store_true",
                    help="ours starts from open_clip's initial weights (each library's own init otherwise)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps = args.steps or (120 if args.quick else 600)
    batch = 32 if args.quick else 64
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else ([0] if args.quick else [0, 1, 2])
    _timm, open_clip = import_references()
    rows = {"ours": [], "peer": []}
    for seed in seeds:
        o, p = run_seed(open_clip, seed, steps, batch, chunk=20, same_init=args.same_init)
        rows["ours"].append(o)
        rows["peer"].append(p)
        print(f"seed {seed}: ours {o}  open_clip {p}", file=sys.stderr, flush=True)
    med = {side: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for side, rs in rows.items()}
    keys = ("clip_img_s", "clip_zero_shot")
    per_seed = {k: [o[k] / p[k] if p[k] else float("nan") for o, p in zip(rows["ours"], rows["peer"])] for k in keys}
    print(f"{'metric':<16}{'ours':>12}{'open_clip':>12}")
    for k in med["ours"]:
        print(f"{k:<16}{med['ours'][k]:>12.4f}{med['peer'][k]:>12.4f}")
    print(json.dumps({"benchmark": "multimodal", "steps": steps, "batch": batch, "seeds": seeds,
                      "same_init": args.same_init,
                      "ours": {k: round(v, 4) for k, v in med["ours"].items()},
                      "peer": {k: round(v, 4) for k, v in med["peer"].items()},
                      "ratio_per_seed": {k: [round(v, 4) for v in vs] for k, vs in per_seed.items()},
                      "ratio_of_medians": {k: round(med["ours"][k] / med["peer"][k], 4) if med["peer"][k] else None
                                           for k in keys},
                      "ratio": {k: round(statistics.median(per_seed[k]), 4) for k in keys}}))


if __name__ == "__main__":
    main()
