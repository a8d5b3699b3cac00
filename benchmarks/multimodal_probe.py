"""What does a frozen easy-vqa vision encoder know? Linear probes of colour and shape.

Trains a CLIP/SigLIP (`llmlab mm train` settings, as key=value overrides) on the first
`--fit` easy-vqa *training* images, then fits logistic-regression probes for colour (8 classes)
and shape (3) on frozen features of those images and scores them on the rest of the training
split (a validation split: the test split is never touched). Features: the mean of the patch
features, and all patch features concatenated (what the LLaVA projector sees). Also prints the
zero-shot shape accuracy on the validation images. Also the penultimate block's patch features
(`forward_features(x, -2)`, what LLaVA-1.5 feeds its projector) and, with `--llava_run`, the encoder
as a `llmlab mm llava train_vision=true` run left it. Last line: one JSON object.

    python benchmarks/multimodal_probe.py max_steps=300                 # the old recipe
    python benchmarks/multimodal_probe.py max_steps=1000 positives=caption
    python benchmarks/multimodal_probe.py --run_dir runs/ev_clip  # probe a saved `mm train validation=500` run
    python benchmarks/multimodal_probe.py --run_dir runs/ev_clip --llava_run runs/mm_llava  # after LLaVA stage 2
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from _mm_easyvqa import add_args, setup  # benchmarks/ is on sys.path when a script runs


def colour_shape(ds):
    from llmlab.multimodal.data import EASY_VQA_COLORS, EASY_VQA_SHAPES, easy_vqa_caption
    pairs = [easy_vqa_caption(q) for q in ds.qa]
    col = torch.tensor([EASY_VQA_COLORS.index(c) if c else -1 for c, _ in pairs])
    shp = torch.tensor([EASY_VQA_SHAPES.index(s) if s else -1 for _, s in pairs])
    return col, shp


def probe(xtr, ytr, xva, yva) -> float:
    from sklearn.linear_model import LogisticRegression
    a, b = ytr >= 0, yva >= 0
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(xtr[a].numpy(), ytr[a].numpy())
    return float((clf.predict(xva[b].numpy()) == yva[b].numpy()).mean())


@torch.no_grad()
def features(vision, images, layer: int = -1):
    f = torch.cat([vision.forward_features(images[i:i + 256], layer)[:, 1:] for i in range(0, len(images), 256)])
    return f.mean(1), f.flatten(1)


def main() -> None:
    from llmlab.multimodal.evaluate import SHAPE_EVAL_TEMPLATES, zero_shot_accuracy
    from llmlab.multimodal.train import ContrastiveTrainer, build_model
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(ap)
    ap.add_argument("--run_dir", help="probe this saved easy_vqa run (trained with validation=N, N = 4000 - --fit) "
                                      "instead of training one")
    ap.add_argument("--llava_run", help="with --run_dir: probe the encoder weights of this `mm llava "
                                        "train_vision=true` run (its vision.safetensors) instead")
    args = ap.parse_args()
    cfg, fit, val = setup(args)
    t0 = time.perf_counter()
    if args.run_dir:
        from llmlab.multimodal.runs import load_contrastive
        model, cfg = load_contrastive(args.run_dir)
        if cfg.dataset != "easy_vqa" or cfg.validation != len(val):
            raise SystemExit(f"{args.run_dir}: needs an easy_vqa run with validation={len(val)} (the probe's "
                             f"held-out images); it has dataset={cfg.dataset} validation={cfg.validation}")
        losses = [float("nan")] * 20
        if args.llava_run:
            from llmlab.checkpoint import load_strict, load_tensors
            load_strict(model.visual, load_tensors(f"{args.llava_run}/vision.safetensors"), args.llava_run)
    else:
        model = build_model(cfg)
        trainer = ContrastiveTrainer(model, model.tokenize, fit, cfg)
        trainer.run(cfg.max_steps)
        losses = trainer.losses
    model.eval()
    (mtr, ctr), (mva, cva) = features(model.visual, fit.images), features(model.visual, val.images)
    (coltr, shtr), (colva, shva) = colour_shape(fit), colour_shape(val)
    (_, ptr), (_, pva) = features(model.visual, fit.images, -2), features(model.visual, val.images, -2)
    out = {"overrides": args.overrides, "train_s": round(time.perf_counter() - t0, 1),
           "final_loss": round(sum(losses[-20:]) / 20, 4),
           "val_zero_shot_shape": round(zero_shot_accuracy(model, model.tokenize, val.images, val.labels,
                                                           val.class_names, SHAPE_EVAL_TEMPLATES), 4),
           "probe_colour_mean": probe(mtr, coltr, mva, colva), "probe_shape_mean": probe(mtr, shtr, mva, shva),
           "probe_colour_patches": probe(ctr, coltr, cva, colva), "probe_shape_patches": probe(ctr, shtr, cva, shva),
           "probe_colour_patches_penultimate": probe(ptr, coltr, pva, colva),
           "probe_shape_patches_penultimate": probe(ptr, shtr, pva, shva)}
    # no peer: the probes are compared with chance (the share of the most frequent class on validation)
    known = {k: v[v >= 0].tolist() for k, v in (("colour", colva), ("shape", shva))}
    chance = {k: max(v.count(c) for c in set(v)) / len(v) for k, v in known.items()}
    print(json.dumps({"benchmark": "multimodal_probe", "ours": out, "peer": {"chance": chance},
                      "ratio": {"probe_colour_vs_chance": out["probe_colour_mean"] / chance["colour"],
                                "probe_shape_vs_chance": out["probe_shape_mean"] / chance["shape"]}}))


if __name__ == "__main__":
    main()
