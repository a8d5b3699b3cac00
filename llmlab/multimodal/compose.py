"""Held-out compositional captions on the synthetic scenes: does a dual encoder caption a scene
whose colour-shape pairs it never saw together?

The scenes of `data.scenes` are two coloured shapes with one spatial relation, captioned
"a <c0> <s0> <rel> a <c1> <s1>". Their caption space is finite, so a CLIP/SigLIP captions by
retrieval: every possible caption (ordered pairs of distinct colour-shape objects x 4 relations)
is encoded once and an image takes the one with the highest cosine. "a red circle left of a blue
square" and "a blue square right of a red circle" describe the same scene, so a caption counts as
right when it equals the true one up to that swap. Metrics (Winoground / ARO-style checks of
attribute binding and relations, at toy scale):

* `caption_acc`: the retrieved caption is right (chance 2 / 1,224 with the default palette);
* `objects_acc`: both colour-shape objects are right, relation ignored;
* `relation_acc`: among the captions naming the true two objects, the right relation wins
  (4 relations x 2 orders = 8 candidates, 2 right: chance 0.25);
* `binding_acc`: the true caption beats the one with the two colours swapped (a red circle left
  of a blue square vs a blue circle left of a red square; only scenes whose objects differ in both
  colour and shape; chance 0.5).
* `held_out_object_recall` / `trained_object_recall`: of the true objects that are a held-out pair
  (resp. a pair seen in training), the fraction named in the retrieved caption: in one test image, is the new
  combination missed more often than the familiar object beside it?

The test split holds every scene with a held-out pair (`data.HELD_OUT_COMBOS`, never in
training); the same metrics on fresh draws of seen pairs are the in-distribution control.
"""
from __future__ import annotations

from typing import Callable

import torch

from llmlab.multimodal.data import HELD_OUT_COMBOS, SCENE_COLORS, SCENE_SHAPES

RELATIONS = ["left of", "right of", "above", "below"]
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def parse(caption: str) -> tuple[tuple[str, str], str, tuple[str, str]]:
    """"a red circle left of a blue square" -> (("red", "circle"), "left of", ("blue", "square"))."""
    head, _, tail = caption.removeprefix("a ").partition(" a ")
    w = head.split()
    return (w[0], w[1]), " ".join(w[2:]), tuple(tail.split()[:2])


def canonical(caption: str) -> tuple:
    """The scene a caption describes: the same key for a caption and its object-swapped form."""
    o0, rel, o1 = parse(caption)
    return min((o0, rel, o1), (o1, INVERSE[rel], o0))


def caption_space() -> list[str]:
    objs = [(c, s) for c in SCENE_COLORS for s in SCENE_SHAPES]
    return [f"a {c0} {s0} {rel} a {c1} {s1}" for c0, s0 in objs for c1, s1 in objs if (c0, s0) != (c1, s1)
            for rel in RELATIONS]


def colour_swapped(caption: str) -> str | None:
    (c0, s0), rel, (c1, s1) = parse(caption)
    return None if c0 == c1 or s0 == s1 else f"a {c1} {s0} {rel} a {c0} {s1}"


@torch.no_grad()
def _encode_texts(model, tokenize: Callable, texts: list[str]) -> torch.Tensor:
    return torch.cat([model.encode_text(tokenize(texts[i:i + 256]), normalize=True) for i in range(0, len(texts), 256)])


@torch.no_grad()
def scene_caption_metrics(model, tokenize: Callable, images: torch.Tensor, captions: list[str]) -> dict[str, float]:
    from llmlab.multimodal.evaluate import encode_images
    space = caption_space()
    keys = [canonical(c) for c in space]
    objects = [frozenset((k[0], k[2])) for k in keys]
    sim = encode_images(model, images) @ _encode_texts(model, tokenize, space).t()  # (N, |space|)
    best = sim.argmax(1).tolist()
    index = {c: i for i, c in enumerate(space)}
    cap_ok = obj_ok = rel_ok = 0
    bind_ok, bind_n = 0, 0
    named = {True: [0, 0], False: [0, 0]}  # held out? -> [named, total]
    for n, (b, cap) in enumerate(zip(best, captions)):
        key = canonical(cap)
        for obj in (key[0], key[2]):
            named[obj in HELD_OUT_COMBOS][0] += obj in objects[b]
            named[obj in HELD_OUT_COMBOS][1] += 1
        cap_ok += keys[b] == key
        obj_ok += objects[b] == frozenset((key[0], key[2]))
        same_objs = [i for i, o in enumerate(objects) if o == frozenset((key[0], key[2]))]
        rel_ok += keys[max(same_objs, key=lambda i: sim[n, i].item())] == key
        swapped = colour_swapped(cap)
        if swapped is not None:
            bind_n += 1
            bind_ok += sim[n, index[cap]].item() > sim[n, index[swapped]].item()
    out = {"caption_acc": cap_ok / len(captions), "objects_acc": obj_ok / len(captions),
           "relation_acc": rel_ok / len(captions)}
    if bind_n:
        out["binding_acc"] = bind_ok / bind_n
    for held, name in ((True, "held_out_object_recall"), (False, "trained_object_recall")):
        if named[held][1]:
            out[name] = named[held][0] / named[held][1]
    return out
