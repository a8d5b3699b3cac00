"""CapFilt on easy-vqa with planted caption noise (BLIP s3.3, at toy scale).

1. Replace a seeded `--noise` fraction of the captions of the first `--fit` easy-vqa training images
   with wrong ones (the "web" text); the rest of the training split is the validation split.
2. Pre-train a CLIP on the noisy pairs. It is both the filter (keep a text when it is among the
   model's top-k of the 24+ distinct captions for that image) and the captioner (its top-1 caption:
   a retrieval captioner, not BLIP's generative decoder).
3. Report the filter's quality against the answer key, then train a fresh CLIP on the bootstrapped
   set (kept web + kept synthetic pairs), one on the noisy set and one on the clean captions, and
   score each on the validation images: caption retrieval i2t r@1 and zero-shot shape accuracy.
Last line: one JSON object. The test split is never used.

    python benchmarks/multimodal_capfilt.py --noise 0.4 max_steps=300
"""
from __future__ import annotations

import argparse
import json

import torch

from _mm_easyvqa import add_args, setup  # benchmarks/ is on sys.path when a script runs


def train_clip(cfg, ds):
    from llmlab.multimodal.train import ContrastiveTrainer, build_model
    model = build_model(cfg)
    ContrastiveTrainer(model, model.tokenize, ds, cfg).run(cfg.max_steps)
    return model.eval()


def main() -> None:
    from llmlab.multimodal import data as mmdata
    from llmlab.multimodal.capfilt import capfilt, corrupt_captions, filter_quality
    from llmlab.multimodal.train import evaluate_contrastive
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(ap)
    ap.add_argument("--noise", type=float, default=0.4)
    ap.add_argument("--top_k", type=int, default=1)
    ap.add_argument("--no_captioner", action="store_true",
                    help="filter the web captions only (here the captioner is the filter's own top-1, so the filter keeps "
                         "every synthetic caption: with one model for both, only filtering is informative)")
    args = ap.parse_args()
    cfg, fit, val = setup(args)
    noisy_caps, bad = corrupt_captions(fit.captions, args.noise, cfg.seed)
    noisy = mmdata.ImageSet(fit.images, fit.labels, fit.class_names, noisy_caps, fit.name)
    teacher = train_clip(cfg, noisy)
    vocab = sorted(set(fit.captions))
    with torch.no_grad():
        vtxt = teacher.encode_text(teacher.tokenize(vocab))

    @torch.no_grad()
    def ranked(images):
        return (teacher.encode_image(images) @ vtxt.t()).argsort(-1, descending=True)

    def match_prob(images, texts):
        top = ranked(images)[:, :args.top_k]
        return torch.tensor([float(t in vocab and vocab.index(t) in row.tolist()) for row, t in zip(top, texts)])
    captioner = None if args.no_captioner else (lambda im: [vocab[r[0]] for r in ranked(im).tolist()])
    out = capfilt(fit.images, noisy_caps, captioner, match_prob)
    idx = torch.tensor([i for i, _t, _s in out["pairs"]])
    boot = mmdata.ImageSet(fit.images[idx], fit.labels[idx], fit.class_names, [t for _i, t, _s in out["pairs"]], fit.name)
    syn_right = sum(s == c for s, c in zip(out["synthetic"] or [], fit.captions)) / len(fit)
    result = {"noise": args.noise, "overrides": args.overrides, **filter_quality(out["web_kept"], bad),
              "synthetic_correct": round(syn_right, 4), "bootstrapped_pairs": len(boot), "noisy_pairs": len(noisy)}
    for name, ds in (("noisy", noisy), ("capfilt", boot), ("clean", fit)):
        model = train_clip(cfg, ds)
        with torch.no_grad():
            m = evaluate_contrastive(model, model.tokenize, val)
        result[name] = {"val_i2t_r@1": round(m["i2t_r@1"], 4), "val_zero_shot_shape": round(m["zero_shot_acc"], 4)}
        print(json.dumps(result), flush=True)
    # ratio: validation i2t r@1 after training on the CapFilt set over training on the noisy web captions
    print(json.dumps({"benchmark": "multimodal_capfilt", "ours": result["capfilt"], "peer": result["noisy"],
                      "ratio": {"val_i2t_r@1": result["capfilt"]["val_i2t_r@1"]
                                / max(result["noisy"]["val_i2t_r@1"], 1e-9)}, "detail": result}))


if __name__ == "__main__":
    main()
