"""Zero-shot classification with prompt ensembles, and image-text retrieval recall@K.

Zero-shot (Radford et al. 2021 s3.1.4): each class name is put into every prompt template, the
normalised text embeddings of one class are averaged and re-normalised into a class embedding,
and an image is assigned the class whose embedding has the highest cosine with it. Works for any
model with `encode_image`, `encode_text` and a tokenizer (ours and open_clip's).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

DIGIT_TRAIN_TEMPLATES = ["a handwritten digit {}", "a photo of the number {}", "the digit {}",
                         "a small image of a {}"]
# `templates=extended`: more training phrasings (still none of the held-out ones below), so the text
# tower learns that the class word, not the template, carries the meaning
DIGIT_EXTRA_TEMPLATES = ["a scan of the digit {}", "this is a {}", "a picture of a {}", "a drawing of the numeral {}",
                         "an image showing {}", "a {} written by hand", "{}", "a blurry {}"]
# held-out prompts: none of these templates is seen in training
DIGIT_EVAL_TEMPLATES = ["a handwritten {}", "the number {}", "a photo of a {}", "digit {}"]
# `mm eval prompts=generic`: the held-out prompts plus 12 generic ones in the style of CLIP's ImageNet
# ensemble (s3.1.4), written in session 9 before any figure with them and without looking at test;
# none is a training caption template (base or extended), so the whole ensemble is unseen in training
DIGIT_GENERIC_TEMPLATES = DIGIT_EVAL_TEMPLATES + [
    "a photo of the {}.", "a bad photo of a {}.", "a drawing of a {}.", "a sketch of a {}.",
    "a low resolution photo of the {}.", "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a pixelated photo of the {}.", "a scan of a handwritten {}.", "a number {}", "the numeral {}", "a written {}"]
SHAPE_TRAIN_TEMPLATES = ["a {}", "a picture of a {}"]  # easy-vqa: captions are "a <colour> <shape>"
SHAPE_EVAL_TEMPLATES = ["a {}", "a photo of a {}", "a {} shape"]


@torch.no_grad()
def class_embeddings(model, tokenize: Callable, class_names: list[str], templates: list[str]) -> torch.Tensor:
    """(num_classes, D): the re-normalised mean of each class's normalised prompt embeddings."""
    rows = []
    for name in class_names:
        f = model.encode_text(tokenize([t.format(name) for t in templates]), normalize=True)
        rows.append(F.normalize(f.mean(0), dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def encode_images(model, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([model.encode_image(images[i:i + batch_size], normalize=True)
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def zero_shot_accuracy(model, tokenize: Callable, images: torch.Tensor, labels: torch.Tensor,
                       class_names: list[str], templates: list[str]) -> float:
    keep = labels >= 0  # easy-vqa: a few images whose shape the questions never state
    cls = class_embeddings(model, tokenize, class_names, templates)
    pred = (encode_images(model, images[keep]) @ cls.t()).argmax(-1)
    return (pred == labels[keep]).float().mean().item()


@torch.no_grad()
def choose_templates(model, tokenize: Callable, images: torch.Tensor, labels: torch.Tensor,
                     class_names: list[str], templates: list[str]) -> tuple[list[str], float]:
    """The prompt ensemble chosen on held-out *validation* images (CLIP s3.1.4 tuned its ensembles
    on dev sets): every non-empty subset of `templates` is scored, the most accurate wins (ties: the
    larger ensemble, then the earlier subset). Returns (templates, validation accuracy)."""
    from itertools import combinations
    keep = labels >= 0
    img, y = encode_images(model, images[keep]), labels[keep]
    per = torch.stack([class_embeddings(model, tokenize, class_names, [t]) for t in templates])  # (T, C, D)
    best, best_acc = list(templates), -1.0
    for k in range(len(templates), 0, -1):
        for subset in combinations(range(len(templates)), k):
            cls = F.normalize(per[list(subset)].mean(0), dim=-1)
            acc = ((img @ cls.t()).argmax(-1) == y).float().mean().item()
            if acc > best_acc:
                best, best_acc = [templates[i] for i in subset], acc
    return best, best_acc


def recall_at_k(sim: torch.Tensor, ks=(1, 5), groups: torch.Tensor | None = None) -> dict[str, float]:
    """sim (N images, N texts), pair i is (image i, text i). Image->text and text->image recall@k:
    the fraction whose true partner ranks among the top k (ties count against us). `groups`
    (N,): pairs with the same id have identical captions, so retrieving any of them is correct
    (only candidates of other groups can outrank the true partner)."""
    out = {}
    other = None if groups is None else groups.unsqueeze(0) != groups.unsqueeze(1)
    for name, s in (("i2t", sim), ("t2i", sim.t())):
        true = s.diagonal().unsqueeze(1)
        beats = s > true
        rank = (beats if other is None else beats & other).sum(1)  # candidates beating the true one
        for k in ks:
            out[f"{name}_r@{k}"] = (rank < k).float().mean().item()
    return out


@torch.no_grad()
def retrieval(model, tokenize: Callable, images: torch.Tensor, captions: list[str], ks=(1, 5)) -> dict[str, float]:
    img = encode_images(model, images)
    txt = torch.cat([model.encode_text(tokenize(captions[i:i + 256]), normalize=True)
                     for i in range(0, len(captions), 256)])
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    return recall_at_k(img @ txt.t(), ks, torch.tensor([ids[c] for c in captions]))
