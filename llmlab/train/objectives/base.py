"""What every objective produces, and how examples become training batches.

An objective turns one raw window of tokens into an `Example`: `inputs` (what the model reads
with full visibility: the encoder's input, or a prefix decoder's prefix) and `targets` (what it
predicts left to right), or, for BERT's MLM, corrupted `inputs` with per-position `labels`.
The same examples then feed either architecture:

- decoder-only (`decoder_batch`): one row `inputs + targets`, next-token labels on the targets only
  (-100 on the prefix); with a prefix decoder the forward gets `prefix_lengths = len(inputs)`;
- encoder-decoder (`seq2seq_batch`): encoder reads `inputs` (padding masked), decoder reads
  `[decoder_start] + targets[:-1]` and predicts `targets` (teacher forcing, as T5).

`ObjectiveLoader` wraps any (x, y) window loader of the trainer (llmlab/train/loader.py) and yields
(ModelInputs, labels): ModelInputs is the forward's keyword arguments, with `.to(device)` and
`.shape` so the trainer moves and checks it like a tensor. Its random draws come from
numpy's generator seeded with (seed, batch number), so a resumed run draws the same corruption.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IGNORE = -100


@dataclass
class Example:
    inputs: list[int]
    targets: list[int]
    labels: list[int] | None = None  # MLM only: a label per input position (IGNORE = not predicted)


class ModelInputs(dict):
    """Forward keyword arguments of one batch (input_ids first)."""

    def to(self, device, non_blocking: bool = False) -> "ModelInputs":
        return ModelInputs({k: v.to(device, non_blocking=non_blocking) for k, v in self.items()})

    @property
    def shape(self) -> torch.Size:
        return self["input_ids"].shape


def _pad(rows: list[list[int]], width: int, value: int) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r[:width], dtype=torch.long)
    return out


def decoder_batch(examples: list[Example], width: int, pad_id: int, prefix: bool) -> tuple[ModelInputs, torch.Tensor]:
    """Rows for a decoder-only model of `width` positions -> (ModelInputs, labels (B, width))."""
    xs, ys, plen = [], [], []
    for ex in examples:
        if ex.labels is not None:  # MLM: labels sit on the positions themselves (not shifted)
            xs.append(ex.inputs[:width])
            ys.append(ex.labels[:width])
            plen.append(width)
            continue
        seq, k = ex.inputs + ex.targets, len(ex.inputs)
        xs.append(seq[:-1])
        ys.append([t if i + 1 >= k else IGNORE for i, t in enumerate(seq[1:])])  # predict targets only
        plen.append(k)
    inputs = ModelInputs(input_ids=_pad(xs, width, pad_id))
    if prefix:
        inputs["prefix_lengths"] = torch.tensor(plen, dtype=torch.long)
    return inputs, _pad(ys, width, IGNORE)


def seq2seq_batch(examples: list[Example], pad_id: int, decoder_start_id: int) -> tuple[ModelInputs, torch.Tensor]:
    """Rows for an encoder-decoder -> (ModelInputs(input_ids, attention_mask, decoder_input_ids), labels)."""
    enc = [ex.inputs or [pad_id] for ex in examples]  # an empty input (plain LM) still needs one key
    S, T = max(len(r) for r in enc), max(len(ex.targets) for ex in examples)
    mask = _pad([[1] * len(r) for r in enc], S, 0)
    if not any(ex.inputs for ex in examples):
        mask[:, 0] = 1
    dec = [[decoder_start_id] + ex.targets[:-1] for ex in examples]
    inputs = ModelInputs(input_ids=_pad(enc, S, pad_id), attention_mask=mask, decoder_input_ids=_pad(dec, T, pad_id))
    return inputs, _pad([ex.targets for ex in examples], T, IGNORE)


class ObjectiveLoader:
    """(x, y) windows -> objective batches. layout: 'causal' | 'prefix' (a prefix decoder) | 'seq2seq'."""

    def __init__(self, base, objective, ids: dict[str, int], layout: str, pad_id: int = 0,
                 eos_id: int | None = None, decoder_start_id: int = 0, seed: int = 0):
        self.base, self.objective, self.ids, self.layout = base, objective, ids, layout
        self.pad_id, self.eos_id, self.decoder_start_id, self.seed = pad_id, eos_id, decoder_start_id, seed
        self.count = 0

    def build(self, windows: torch.Tensor, rng: np.random.Generator) -> tuple[ModelInputs, torch.Tensor]:
        """(B, T+1) raw windows -> one batch."""
        examples = [self.objective.example(w.tolist(), rng, self.ids, self.eos_id) for w in windows]
        if self.layout == "seq2seq":
            return seq2seq_batch(examples, self.pad_id, self.decoder_start_id)
        return decoder_batch(examples, windows.shape[1] - 1, self.pad_id, self.layout == "prefix")

    def __iter__(self):
        for x, y in self.base:
            rng = np.random.default_rng([self.seed, self.count])
            self.count += 1
            yield self.build(torch.cat([x, y[:, -1:]], 1), rng)

    def __len__(self) -> int:
        return len(self.base)

    def state_dict(self) -> dict:
        return {"base": self.base.state_dict() if hasattr(self.base, "state_dict") else None, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        if state.get("base") is not None and hasattr(self.base, "load_state_dict"):
            self.base.load_state_dict(state["base"])
        self.count = int(state.get("count", 0))
