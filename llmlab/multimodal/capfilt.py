"""CapFilt (BLIP, Li et al. 2022 s3.3): bootstrap a cleaner caption set from noisy web pairs.

1. Captioner: an image-grounded text decoder writes a synthetic caption for every web image
   (BLIP samples with nucleus sampling for diversity).
2. Filter: an image-text matching model scores every (image, text) pair, web and synthetic;
   a text is kept only when the filter says it matches its image (ITM probability >= threshold).
3. The new training set is the clean (human) pairs + kept web pairs + kept synthetic pairs, and a
   new model is pre-trained on it.

Here the captioner and filter are callables, so any trained model serves: the captioner can be a
`llmlab mm llava` run asked to "describe the image." (its stage-1 task), the filter a CLIP's
cosine (mapped to [0, 1]) or a BLIP ITM head (qformer.itm_loss's binary head).
`corrupt_captions` plants noise with a known answer key to measure a filter's precision/recall.
"""
from __future__ import annotations

import random
from typing import Callable, Sequence

import torch


def corrupt_captions(captions: Sequence[str], fraction: float, seed: int = 0) -> tuple[list[str], list[bool]]:
    """Replace a seeded `fraction` of captions with another image's (different) caption: the
    simulated noisy web text, and the per-pair flag "this caption is wrong"."""
    rng = random.Random(seed)
    out, bad = list(captions), [False] * len(captions)
    for i in rng.sample(range(len(captions)), round(fraction * len(captions))):
        choices = [c for c in set(captions) if c != captions[i]]
        if choices:
            out[i], bad[i] = rng.choice(sorted(choices)), True
    return out, bad


def capfilt(images: torch.Tensor, web: Sequence[str], captioner: Callable[[torch.Tensor], list[str]] | None,
            match_prob: Callable[[torch.Tensor, list[str]], torch.Tensor], threshold: float = 0.5,
            batch_size: int = 256) -> dict:
    """-> {"pairs": [(image index, text, source)], "web_kept": mask, "synthetic": texts or None,
    "synthetic_kept": mask or None}. `match_prob(images, texts)` gives each pair's probability of
    matching; `captioner(images)` one caption per image (None: filter the web text only)."""
    def keep(texts: list[str]) -> torch.Tensor:
        return torch.cat([match_prob(images[i:i + batch_size], texts[i:i + batch_size]) >= threshold
                          for i in range(0, len(texts), batch_size)])

    web = list(web)
    web_kept = keep(web)
    synthetic = synthetic_kept = None
    if captioner is not None:
        synthetic = [c for i in range(0, len(images), batch_size) for c in captioner(images[i:i + batch_size])]
        synthetic_kept = keep(synthetic)
    pairs = [(i, web[i], "web") for i in range(len(web)) if web_kept[i]]
    if synthetic is not None:
        pairs += [(i, synthetic[i], "synthetic") for i in range(len(synthetic)) if synthetic_kept[i]]
    return {"pairs": pairs, "web_kept": web_kept, "synthetic": synthetic, "synthetic_kept": synthetic_kept}


def filter_quality(kept: torch.Tensor, bad: Sequence[bool]) -> dict:
    """How well a filter removed planted noise: recall of bad pairs removed, clean pairs kept."""
    bad_t = torch.tensor(bad)
    removed = ~kept
    return {"bad_removed": (removed & bad_t).sum().item() / max(1, bad_t.sum().item()),
            "clean_kept": (kept & ~bad_t).sum().item() / max(1, (~bad_t).sum().item()),
            "kept_clean_fraction": (kept & ~bad_t).sum().item() / max(1, kept.sum().item())}


def clip_match_prob(model, scale: float = 10.0, bias: float | None = None) -> Callable:
    """A CLIP as the filter: sigmoid(scale * cos(image, text) + bias) per pair (SigLIP's form;
    for a SigLIP model pass its own scale and bias). bias defaults to -scale/2 (cosine 0.5 -> p 0.5)."""
    b = -scale / 2 if bias is None else bias

    @torch.no_grad()
    def prob(images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        cos = (model.encode_image(images) * model.encode_text(model.tokenize(texts))).sum(-1)
        return torch.sigmoid(scale * cos + b)
    return prob
