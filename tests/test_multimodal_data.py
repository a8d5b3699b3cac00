"""Packaged image data: splits disjoint, easy-vqa captions from its questions, scenes exact and
held out, MNIST read without running pickled code."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from llmlab.errors import UserError
from llmlab.multimodal import data as D


def test_digits_split_disjoint_and_stratified():
    tr, te = D.digits("train"), D.digits("test")
    assert len(tr) + len(te) == 1797 and tr.images.shape[1:] == (1, 8, 8)
    flat = {tuple(x.flatten().tolist()) for x in tr.images}
    dup = sum(tuple(x.flatten().tolist()) in flat for x in te.images)
    assert dup < 5  # sklearn digits has a handful of byte-identical images across classes, no more
    assert set(te.labels.tolist()) == set(range(10))
    assert tr.captions[0] == f"a handwritten digit {D.DIGIT_NAMES[tr.labels[0]]}"
    with pytest.raises(UserError, match="split"):
        D.digits("validation")


@pytest.mark.slow  # importing sklearn costs ~10 s on a loaded machine
def test_digits_are_sklearns():
    tr, te = D.digits("train"), D.digits("test")
    sk = pytest.importorskip("sklearn.datasets").load_digits()  # the same 1,797 images as sklearn's loader
    ours = np.concatenate([tr.images.numpy(), te.images.numpy()]).reshape(-1, 64) * 16
    assert np.array_equal(np.sort(ours, 0), np.sort(sk.data.astype(np.float32), 0))


def test_easy_vqa_caption_derivation_by_hand():
    qa = [("what is the red shape?", "triangle"), ("is there not a black shape in the image?", "yes")]
    assert D.easy_vqa_caption(qa) == ("red", "triangle")
    qa = [("what color is the shape?", "blue"), ("is no circle present?", "yes"), ("is a rectangle present?", "no")]
    assert D.easy_vqa_caption(qa) == ("blue", "triangle")  # the only shape not said to be absent
    assert D.easy_vqa_caption([("is a gray shape present?", "no")]) == (None, None)


def test_easy_vqa_loads_with_consistent_captions():
    pytest.importorskip("easy_vqa")
    te = D.easy_vqa("test", size=32)
    assert te.images.shape == (1000, 3, 32, 32) and len(te.qa) == 1000
    n_q = sum(len(q) for q in te.qa)
    assert n_q == 9673  # the package's own count
    # every caption agrees with its image's direct questions
    for cap, qa in zip(te.captions, te.qa):
        for q, a in qa:
            if q == "what color is the shape?":
                assert cap.split()[1] == a
            if q == "what shape is present?":
                assert cap.endswith(a)
    # the shape's pixels have the named colour's hue family: red images are mostly red where coloured
    red = [i for i, c in enumerate(te.captions) if c.startswith("a red ")][:20]
    img = te.images[red]
    mask = (img.max(1).values - img.min(1).values) > 0.3
    assert (img[:, 0][mask] > img[:, 2][mask]).float().mean() > 0.9


def test_scenes_exact_and_held_out():
    tr, te = D.scenes("train", n=200, seed=3), D.scenes("test", n=100, seed=3)
    assert torch.equal(tr.images, D.scenes("train", n=200, seed=3).images)  # seeded
    held = {f"{c} {s}" for c, s in D.HELD_OUT_COMBOS}
    assert not any(h in cap for cap in tr.captions for h in held)
    assert all(any(h in cap for h in held) for cap in te.captions)
    rng = np.random.default_rng(0)
    for _ in range(20):  # the caption's first object really has that colour at its cell centre
        img, placed, cap, qa = D.scene(rng, "train", size=32)
        c, s, cx, cy = placed[0]
        assert cap.startswith(f"a {c} {s} ")
        centre = img[cy * 16 + 8, cx * 16 + 8]
        assert tuple(centre) == D.SCENE_COLORS[c]
        assert ("how many objects are there?", "2") in qa


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def test_array_unpickler_refuses_code(tmp_path):
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    ok = D._ArrayUnpickler(__import__("io").BytesIO(pickle.dumps((arr, arr[0])))).load()
    assert np.array_equal(ok[0], arr)
    with pytest.raises(UserError, match="refusing"):
        D._ArrayUnpickler(__import__("io").BytesIO(pickle.dumps(_Evil()))).load()


@pytest.mark.slow  # gunzips 17 MB and builds 60k images
def test_mnist_from_package():
    pytest.importorskip("mnist")
    te = D.mnist("test")
    assert te.images.shape == (10000, 1, 28, 28) and 0 <= te.images.min() and te.images.max() <= 1
    assert torch.bincount(te.labels).min() > 800
