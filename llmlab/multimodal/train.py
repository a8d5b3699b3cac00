"""Contrastive training (CLIP / SigLIP) on packaged images, and its evaluation.

One loop serves our CLIP and open_clip's (benchmarks/multimodal.py): any model whose forward
(images, ids) returns (image_features, text_features, scale[, bias]). Captions for digits are
drawn from training templates only; zero-shot evaluation uses other, held-out templates on the
test split.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from llmlab.errors import UserError
from llmlab.multimodal import data as mmdata
from llmlab.multimodal.clip import CLIP, ClipConfig, TextConfig, contrastive_loss
from llmlab.multimodal.losses import caption_targets
from llmlab.multimodal.momentum import distilled_clip_loss, ema_update, momentum_copy
from llmlab.multimodal.evaluate import (DIGIT_EVAL_TEMPLATES, DIGIT_EXTRA_TEMPLATES, DIGIT_GENERIC_TEMPLATES,
                                        DIGIT_TRAIN_TEMPLATES, SHAPE_EVAL_TEMPLATES,
                                        retrieval, zero_shot_accuracy)
from llmlab.multimodal.vit import ViTConfig

NATIVE = {"digits": (1, 8), "mnist": (1, 28), "easy_vqa": (3, 32), "scenes": (3, 32)}


@dataclass
class ContrastiveConfig:
    model: str = field(default="clip", metadata={"help": "clip (softmax InfoNCE) or siglip (pairwise sigmoid)"})
    dataset: str = field(default="digits", metadata={"help": "digits | mnist | easy_vqa | scenes"})
    output_dir: str = field(default="runs/mm_clip", metadata={"help": "where the model and metrics go"})
    max_steps: int = field(default=300, metadata={"help": "optimizer steps"})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "image-text pairs per step"})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate (cosine decay)"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on norms/biases/temperature)"})
    warmup_steps: int = field(default=20, metadata={"help": "linear warmup steps"})
    train_limit: int = field(default=0, metadata={"help": "use only the first N training images (0: all)"})
    validation: int = field(default=0, metadata={
        "help": "hold out the last N training images and score on them instead of the test split (choose settings here)"})
    seed: int = field(default=0, metadata={"help": "weights, batches and captions"})
    positives: str = field(default="pair", metadata={
        "help": "pair: only image i's own caption is its positive (CLIP); caption: every pair with an identical "
                "caption is a positive too; label: every pair of the same class (digits)"})
    templates: str = field(default="base", metadata={
        "help": "digits/mnist training captions: base (4 templates) or extended (12; the 4 eval templates stay held out)"})
    momentum_alpha: float = field(default=0.0, metadata={
        "help": "ALBEF/BLIP momentum distillation: weight of the EMA model's soft targets (0: off; CLIP only)"})
    momentum: float = field(default=0.995, metadata={"help": "EMA decay of the momentum model"})
    augment: str = field(default="none", metadata={
        "help": "none, or dihedral: each training image gets a random one of the 8 flips/90-degree rotations "
                "(label-preserving for easy-vqa's one coloured shape; refused elsewhere: a flipped 6 is a 9, "
                "a flipped scene swaps left/right)"})
    vision: ViTConfig = field(default_factory=lambda: ViTConfig(image_size=8, patch_size=2, in_chans=1, pool="mean"))
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = field(default=64, metadata={"help": "shared embedding size"})


def check_vision_fits(cfg: ViTConfig, dataset: str) -> None:
    chans, size = NATIVE[dataset]
    if cfg.in_chans != chans:
        raise UserError(f"vision.in_chans={cfg.in_chans} but {dataset} images have {chans} channel(s)")
    if cfg.image_size != size:
        raise UserError(f"vision.image_size={cfg.image_size} but {dataset} images are {size}x{size}")


def load_split(cfg: ContrastiveConfig, split: str) -> mmdata.ImageSet:
    if cfg.dataset not in NATIVE:
        raise UserError(f"unknown dataset '{cfg.dataset}': choose one of {', '.join(NATIVE)}")
    check_vision_fits(cfg.vision, cfg.dataset)
    kw = {"n": 4000 if split == "train" else 1000, "seed": 0} if cfg.dataset == "scenes" else {}
    ds = mmdata.load(cfg.dataset, "train" if cfg.validation else split, **kw)
    if cfg.validation:
        if not 0 < cfg.validation < len(ds):
            raise UserError(f"validation={cfg.validation} must be below the {len(ds)} training images")
        cut = len(ds) - cfg.validation
        ds = ds.subset(cut) if split == "train" else mmdata.ImageSet(
            ds.images[cut:], ds.labels[cut:], ds.class_names, ds.captions[cut:], ds.name, ds.qa[cut:])
    return ds.subset(cfg.train_limit) if split == "train" and cfg.train_limit else ds


def dihedral(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each (C, H, W) image under a random element of the square's symmetry group D4: transpose
    with probability 1/2, then flip H and W independently (8 equally likely outcomes)."""
    t, fh, fw = (torch.rand(3, len(images), generator=gen) < 0.5)
    out = torch.where(t[:, None, None, None], images.transpose(-1, -2), images)
    out = torch.where(fh[:, None, None, None], out.flip(-2), out)
    return torch.where(fw[:, None, None, None], out.flip(-1), out)


def caption_sampler(ds: mmdata.ImageSet, rng: random.Random, templates: str = "base") -> Callable[[list[int]], list[str]]:
    """Digits: a random training template per sample; others: the image's own caption."""
    if ds.name in ("digits", "mnist"):
        pool = DIGIT_TRAIN_TEMPLATES + (DIGIT_EXTRA_TEMPLATES if templates == "extended" else [])
        return lambda idx: [rng.choice(pool).format(ds.class_names[ds.labels[i]]) for i in idx]
    return lambda idx: [ds.captions[i] for i in idx]


def param_groups(model: torch.nn.Module, weight_decay: float, no_decay: tuple[str, ...] = ()) -> list[dict]:
    """Tensors of >= 2 dims decay, except those named in `no_decay`; norms, biases and the temperature do not."""
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2 and n not in no_decay]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and (p.dim() < 2 or n in no_decay)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


class ContrastiveTrainer:
    """Steps any (images, ids) -> (img, txt, scale[, bias]) model; `run(n)` does n more steps and
    returns (images seen, seconds) so a benchmark can alternate two trainers."""

    def __init__(self, model, tokenize: Callable, ds: mmdata.ImageSet, cfg: ContrastiveConfig):
        self.model, self.tokenize, self.ds, self.cfg = model, tokenize, ds, cfg
        self.opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.learning_rate, betas=(0.9, 0.98))
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.captions = caption_sampler(ds, random.Random(cfg.seed), getattr(cfg, "templates", "base"))
        self.step, self.losses = 0, []
        self.ema = momentum_copy(model) if cfg.momentum_alpha > 0 else None

    def targets(self, idx: torch.Tensor, caps: list[str]) -> torch.Tensor | None:
        if self.cfg.positives == "pair":
            return None
        return caption_targets(caps if self.cfg.positives == "caption" else [str(v) for v in self.ds.labels[idx].tolist()])

    def run(self, n: int) -> tuple[int, float]:
        cfg, seen = self.cfg, 0
        self.model.train()
        t0 = time.perf_counter()
        for _ in range(n):
            idx = torch.randint(len(self.ds), (cfg.per_device_train_batch_size,), generator=self.gen)
            # no repeated image in a batch: a duplicate pair would be a false negative
            idx = torch.unique(idx)
            for g in self.opt.param_groups:
                g["lr"] = lr_at(self.step, cfg.learning_rate, cfg.warmup_steps, cfg.max_steps)
            caps = self.captions(idx.tolist())
            images, ids, targets = self.ds.images[idx], self.tokenize(caps), self.targets(idx, caps)
            if cfg.augment == "dihedral":
                images = dihedral(images, self.gen)
            if self.ema is None:
                loss = contrastive_loss(self.model(images, ids), targets)
            else:
                with torch.no_grad():
                    out_m = self.ema(images, ids)
                loss = distilled_clip_loss(self.model(images, ids), out_m, cfg.momentum_alpha, targets)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            if self.ema is not None:
                ema_update(self.model, self.ema, cfg.momentum)
            self.losses.append(loss.item())
            self.step += 1
            seen += len(idx)
        return seen, time.perf_counter() - t0


def build_model(cfg: ContrastiveConfig) -> CLIP:
    if cfg.positives not in ("pair", "caption", "label"):
        raise UserError(f"positives must be pair, caption or label, got '{cfg.positives}'")
    if cfg.momentum_alpha and (cfg.model != "clip" or not 0 < cfg.momentum_alpha < 1):
        raise UserError(f"momentum_alpha={cfg.momentum_alpha}: momentum distillation needs model=clip and 0 < alpha < 1")
    if cfg.templates not in ("base", "extended"):
        raise UserError(f"templates must be base or extended, got '{cfg.templates}'")
    if cfg.positives == "label" and cfg.dataset not in ("digits", "mnist"):
        raise UserError(f"positives=label needs one class per caption (digits, mnist), not {cfg.dataset}")
    if cfg.augment not in ("none", "dihedral"):
        raise UserError(f"augment must be none or dihedral, got '{cfg.augment}'")
    if cfg.augment == "dihedral" and cfg.dataset != "easy_vqa":
        raise UserError(f"augment=dihedral changes {cfg.dataset} captions' meaning (a flipped 6 is a 9, a flipped "
                        "scene swaps left and right): it is for easy_vqa only")
    if cfg.model not in ("clip", "siglip"):
        raise UserError(f"model must be clip or siglip for contrastive training, got '{cfg.model}'")
    torch.manual_seed(cfg.seed)
    return CLIP(ClipConfig(vision=cfg.vision, text=cfg.text, embed_dim=cfg.embed_dim, loss=cfg.model))


def evaluate_contrastive(model, tokenize: Callable, test: mmdata.ImageSet, prompts: str = "heldout") -> dict:
    """`prompts`: heldout (the 4 held-out digit templates) or generic (those plus 12 generic ones,
    digits/mnist only); both sets are unseen in training."""
    model.eval()
    digits = test.name in ("digits", "mnist")
    if prompts not in ("heldout", "generic") or (prompts == "generic" and not digits):
        raise UserError(f"prompts must be heldout, or generic for digits/mnist; got '{prompts}' for {test.name}")
    templates = (DIGIT_GENERIC_TEMPLATES if prompts == "generic" else DIGIT_EVAL_TEMPLATES) if digits \
        else SHAPE_EVAL_TEMPLATES
    out = {}
    if test.name in ("digits", "mnist", "easy_vqa"):
        out["zero_shot_acc"] = zero_shot_accuracy(model, tokenize, test.images, test.labels, test.class_names,
                                                  templates)
    out.update(retrieval(model, tokenize, test.images[:1000], test.captions[:1000]))
    if test.name == "scenes":  # captioning by retrieval; fresh draws of seen colour-shape pairs as the control
        from llmlab.multimodal.compose import scene_caption_metrics
        seen = mmdata.scenes("train", n=1000, seed=1)
        out.update(scene_caption_metrics(model, tokenize, test.images, test.captions))
        out.update({f"control_{k}": v for k, v in scene_caption_metrics(model, tokenize, seen.images, seen.captions).items()})
    return out
