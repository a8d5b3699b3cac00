"""Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention"; used by Chen et al. 2023 (position
interpolation) and Peng et al. 2023 (YaRN) to test context extension).

A random number is hidden at a relative depth of a run of repetitive filler; the prompt ends with
"What is the pass key? The pass key is" and the model must continue with the number:

    <intro> <filler ... > The pass key is 71432. Remember it. 71432 is the pass key. <filler ...>
    What is the pass key? The pass key is 71432

Examples are built in token space to an exact total length (the answer included), so "length" is
the number of tokens the model sees. Depth d in [0, 1] puts a fraction d of the filler tokens
before the needle. Scoring is teacher-forced greedy: an example counts as retrieved when the argmax
at every answer position equals the answer token, which is exactly what greedy decoding of the
answer would produce (each step's prefix is then the right one), in one forward pass.
"""
from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

import torch

from llmlab.errors import UserError

# the papers' intro is "There is an important info hidden inside a lot of irrelevant text. Find it and memorize
# them. I will quiz you about the important information there."; shortened so a 256-token window has filler
INTRO = "Find the pass key in the text and remember it."
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"
# Training-only filler (llmlab/ablate/mix.py): no sentence of it is in FILLER, so an evaluation on FILLER
# asks a model for retrieval inside text it never saw as a haystack.
TRAIN_FILLERS = (
    "A river runs past the old mill. The road turns left at the bridge. Birds rest on the wall.",
    "The cat sat by the door. Rain fell all night on the roof. The bread was still warm.",
    "Ships wait in the harbor. The market opens at dawn. A bell rings twice at noon.",
    "The lamp is on the desk. The window is open. The clock is slow. The tea is cold.",
)
KEY_SPLITS = ("all", "held_out", "train")


def held_out_key(key: str) -> bool:
    """The evaluation's share of keys (1 in 4, by a fixed hash): a model trained on `train` keys never saw them."""
    return zlib.crc32(key.encode()) % 4 == 0


@dataclass
class PasskeyExample:
    ids: list[int]  # the whole sequence, answer included (len == length)
    answer_start: int  # ids[answer_start:] is the answer
    key: str
    depth: float
    needle_at: int  # token index where the needle sentence starts


class PasskeyTask:
    """Builds passkey examples for one tokenizer (anything with `encode(text) -> list[int]`)."""

    def __init__(self, tokenizer, digits: int = 5, filler: str = FILLER, keys: str = "all"):
        """keys: "all", "held_out" (only keys with `held_out_key`, for evaluation) or "train" (only the others)."""
        if digits < 1:
            raise UserError(f"passkey digits must be >= 1, got {digits}")
        if keys not in KEY_SPLITS:
            raise UserError(f"passkey keys must be one of {', '.join(KEY_SPLITS)}, got {keys!r}")
        self.tok, self.digits, self.keys = tokenizer, digits, keys
        self.intro = tokenizer.encode(INTRO)
        self.filler = tokenizer.encode(" " + filler)
        self.question = tokenizer.encode(QUESTION)
        sample = self._needle("9" * digits)
        self.overhead = len(self.intro) + len(sample[0]) + len(self.question) + len(sample[1])

    def _needle(self, key: str) -> tuple[list[int], list[int]]:
        return self.tok.encode(NEEDLE.format(key=key)), self.tok.encode(" " + key)

    def min_length(self) -> int:
        return self.overhead + 1

    def _key(self, rng: random.Random) -> str:
        for _ in range(10_000):  # rejection keeps the draw uniform over the split
            key = str(rng.randrange(10 ** (self.digits - 1), 10 ** self.digits))
            if self.keys == "all" or held_out_key(key) == (self.keys == "held_out"):
                return key
        raise UserError(f"no {self.digits}-digit key falls in the {self.keys!r} split")

    def make(self, length: int, depth: float, rng: random.Random, filler: list[int] | None = None) -> PasskeyExample:
        """One example of exactly `length` tokens with the needle at relative `depth` of the filler
        (the task's filler sentence repeated, or the given filler token ids)."""
        if not 0.0 <= depth <= 1.0:
            raise UserError(f"passkey depth must be in [0, 1], got {depth}")
        key = self._key(rng)
        needle, answer = self._needle(key)
        n_fill = length - len(self.intro) - len(needle) - len(self.question) - len(answer)
        if n_fill < 1:
            raise UserError(f"passkey length {length} is too short: the fixed text takes "
                            f"{length - n_fill} tokens (min {self.min_length()})")
        filler = list(filler) if filler else self.filler
        fill = (filler * (n_fill // len(filler) + 1))[:n_fill]
        before = int(round(depth * n_fill))
        ids = self.intro + fill[:before] + needle + fill[before:] + self.question + answer
        assert len(ids) == length
        return PasskeyExample(ids, length - len(answer), key, depth, len(self.intro) + before)

    def batch(self, n: int, length: int, rng: random.Random, depths: list[float] | None = None) -> list[PasskeyExample]:
        """n examples at uniformly random depths (or cycling through `depths`)."""
        return [self.make(length, depths[i % len(depths)] if depths else rng.random(), rng) for i in range(n)]


@torch.no_grad()
def retrieved(model, examples: list[PasskeyExample], batch_size: int = 8) -> list[bool]:
    """Per example: does greedy decoding reproduce the key? (teacher-forced argmax over the answer)."""
    out = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        lengths = {len(e.ids) for e in chunk}
        if len(lengths) != 1:
            raise UserError("retrieved(): examples of one batch must have the same length")
        ids = torch.tensor([e.ids for e in chunk])
        logits = model(ids[:, :-1])
        pred = logits.argmax(-1)  # pred[:, t] predicts ids[:, t + 1]
        for row, e in enumerate(chunk):
            s = e.answer_start
            out.append(bool(torch.equal(pred[row, s - 1:], ids[row, s:])))
    return out


def accuracy_grid(model, task: PasskeyTask, lengths: list[int], depths: list[float], per_cell: int,
                  seed: int = 0, batch_size: int = 8) -> list[list[float]]:
    """acc[i][j]: share of `per_cell` keys retrieved at lengths[i] with the needle at depths[j]."""
    grid = []
    for length in lengths:
        row = []
        for j, depth in enumerate(depths):
            rng = random.Random(f"{seed}-{length}-{j}")  # the same keys for every model compared
            ex = [task.make(length, depth, rng) for _ in range(per_cell)]
            hits = retrieved(model, ex, batch_size)
            row.append(sum(hits) / len(hits))
        grid.append(row)
    return grid
