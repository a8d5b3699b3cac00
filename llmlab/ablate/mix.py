"""A training loader that mixes passkey examples (llmlab/eval/passkey.py) into corpus windows.

The papers test passkey retrieval on models whose pretraining already makes retrieval of a copied
number in-distribution at the trained length; a model this small never sees that format in the
speedrun corpus, so a fixed share of every batch is replaced by passkey rows of the window length
(random key, random depth), with the plain next-token loss on every token. Each batch's passkey
rows come from a generator seeded by (seed, batch index), so resume stays exact.

Passkey retrieval is copying through an induction head (Olsson et al. 2022), and a passkey row
holds only ~10 copied tokens among hundreds of predictable filler ones: at our budget no head
formed (0 % at 1x T after 420 steps, docs/LOG.md). `copy_fraction` adds rows whose first half of a
corpus window is repeated, the classic dense induction signal, so the mechanism forms in budget.
With `copy_period="half"` the repeat always starts T/2 back, and a model can predict it with a
fixed-offset (positional) head instead of an induction head (content match): a model trained so
copied a repeat at T/2 (loss 1.2 vs 5.4 nats) yet retrieved no key (docs/LOG.md, session 5).
`copy_period="random"` repeats a prefix of random length h in [T/16, T/2] per row, so only a
content match predicts every row.

Held out from the evaluation: pass a task with keys="train" (the evaluation asks keys="held_out"
ones), and the rows' filler is never the evaluation's FILLER: a share `text_filler` of the passkey
rows hide the key in the very corpus window they replace (natural text), the rest in one of
TRAIN_FILLERS (repetitive sentences, none of them in FILLER).

Depths are uniform in [0, 1], except that a share `endpoint_share` of the passkey rows puts the needle at
exactly depth 0 (half of that share: right after the intro) or exactly 1 (the other half: right before
the question). A uniform draw almost never gives those two positions (depth 1 needs d > 1 - 1/(2 n_fill)),
yet they are where every fine-tuned arm lost keys at 4T (docs/LOG.md, session 9). One uniform draw u
decides both: u < s/2 -> 0, u < s -> 1, else (u - s) / (1 - s); at s = 0 the rows are those of before.
Only the endpoints are added, not the evaluation's inner depths (.25, .5, .75). `endpoint_depth1` moves the
split between the two ends: u < s (1 - d1) -> 0, u < s -> 1 (d1 = 0.5, the default, is the draw above).

`passkey_loss="answer"` keeps the loss of a passkey row on its answer tokens only (the others are
-100), as in supervised fine-tuning on a retrieval task: the ~5 answer tokens are otherwise ~4 % of
the row's loss, and the filler they compete with is learnt long before the lookup is.
"""
from __future__ import annotations

import random

import torch

from llmlab.errors import UserError
from llmlab.eval.passkey import TRAIN_FILLERS, PasskeyTask


class PasskeyMixLoader:
    def __init__(self, text_loader, task: PasskeyTask, seq_len: int, passkey_fraction: float, seed: int = 0,
                 copy_fraction: float = 0.0, text_filler: float = 0.5, passkey_loss: str = "all",
                 copy_period: str = "half", endpoint_share: float = 0.0,
                 endpoint_depth1: float = 0.5):
        if not (0.0 <= passkey_fraction and 0.0 <= copy_fraction and passkey_fraction + copy_fraction <= 1.0):
            raise UserError(f"passkey_fraction {passkey_fraction} + copy_fraction {copy_fraction} must be in [0, 1]")
        if seq_len + 1 < task.min_length():
            raise UserError(f"window {seq_len} is shorter than a passkey example ({task.min_length()} tokens)")
        if passkey_loss not in ("all", "answer"):
            raise UserError(f"passkey_loss must be all or answer, got {passkey_loss!r}")
        self.answer_only = passkey_loss == "answer"
        if copy_period not in ("half", "random"):
            raise UserError(f"copy_period must be half or random, got {copy_period!r}")
        self.random_period = copy_period == "random"
        if not 0.0 <= endpoint_share < 1.0:
            raise UserError(f"endpoint_share must be in [0, 1), got {endpoint_share}")
        if not 0.0 <= endpoint_depth1 <= 1.0:
            raise UserError(f"endpoint_depth1 must be in [0, 1], got {endpoint_depth1}")
        self.endpoint_share, self.endpoint_depth1 = endpoint_share, endpoint_depth1
        self.text, self.task, self.seq_len, self.seed = text_loader, task, seq_len, seed
        self.fraction, self.copy, self.batches = passkey_fraction, copy_fraction, 0
        self.text_filler = text_filler
        self.fillers = [task.tok.encode(" " + f) for f in TRAIN_FILLERS]

    def __len__(self) -> int:
        return len(self.text)

    def __iter__(self):
        for x, y in self.text:
            n = int(round(self.fraction * x.shape[0]))
            c = min(int(round(self.copy * x.shape[0])), x.shape[0] - n)
            if n or c:
                x, y = x.clone(), y.clone()
            if n:
                rng = random.Random(f"{self.seed}-{self.batches}")
                ex = [self.task.make(self.seq_len + 1, self.depth(rng.random()), rng, self._filler(x[i], rng)) for i in range(n)]
                rows = torch.tensor([e.ids for e in ex])
                x[:n], y[:n] = rows[:, :-1], rows[:, 1:]
                if self.answer_only:  # y[:, t] is ids[t + 1]: the answer's targets are y[:, answer_start - 1:]
                    for i, e in enumerate(ex):
                        y[i, : e.answer_start - 1] = -100
            if c:  # w[:h] w[:h] ...: every token of the repeat is predictable by copying
                w = torch.cat([x[n:n + c], y[n:n + c, -1:]], 1)
                rng = random.Random(f"{self.seed}-{self.batches}-copy")
                for i in range(c):
                    h = rng.randint(max(2, self.seq_len // 16), self.seq_len // 2) if self.random_period \
                        else (self.seq_len + 1) // 2
                    rep = w[i, :h].repeat((self.seq_len + 1) // h + 1)[: self.seq_len + 1]
                    x[n + i], y[n + i] = rep[:-1], rep[1:]
            self.batches += 1
            yield x, y

    def depth(self, u: float) -> float:
        """A uniform draw u in [0, 1) -> the needle's depth (exactly 0 or 1 for a share endpoint_share,
        of which a share endpoint_depth1 at 1)."""
        s = self.endpoint_share
        if u < s:
            return 0.0 if u < s * (1.0 - self.endpoint_depth1) else 1.0
        return (u - s) / (1.0 - s)

    def _filler(self, window: torch.Tensor, rng: random.Random) -> list[int]:
        if rng.random() < self.text_filler:
            return window.tolist()
        return self.fillers[rng.randrange(len(self.fillers))]

    def state_dict(self) -> dict:
        return {"text": self.text.state_dict(), "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.text.load_state_dict(state["text"])
        self.batches = int(state["batches"])
