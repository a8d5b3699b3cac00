"""Shared setup of the easy-vqa CLIP studies (multimodal_probe.py, multimodal_capfilt.py): the
arguments, the config, and the training images split into a fit part and a held-out validation
part (the test split is never read)."""
from __future__ import annotations

from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs/mm_clip_easyvqa.yaml"


def add_args(ap) -> None:
    ap.add_argument("--config", default=str(CONFIG))
    ap.add_argument("--fit", type=int, default=3500, help="training images used for fitting; the rest validate")
    ap.add_argument("--quick", action="store_true", help="smoke run: 500 images, 20 steps")
    ap.add_argument("overrides", nargs="*")


def setup(args):
    """(ContrastiveConfig, fit ImageSet, validation ImageSet), one thread."""
    import torch

    from llmlab.config import load_config
    from llmlab.multimodal import data as mmdata
    from llmlab.multimodal.train import ContrastiveConfig
    if args.quick:
        args.fit, args.overrides = 500, [*args.overrides, "max_steps=20"]
    torch.set_num_threads(1)
    cfg = load_config(ContrastiveConfig, [args.config, *args.overrides])
    fit, val = mmdata.easy_vqa("train", size=cfg.vision.image_size).split(args.fit)
    return cfg, fit, val
