"""The loader interface the trainer needs, and a small in-memory implementation of it.

The trainer accepts any iterable of (x, y) LongTensor batches of shape (batch, seq_len), where y
is x shifted by one token, with `state_dict()` / `load_state_dict()` giving a JSON-able position
(the real corpus loader is `llmlab.data`'s). `TokenArrayLoader` streams fixed windows from a 1-D
token array: window i covers tokens [i*T, i*T + T + 1). Each optimizer step takes a global batch of
`batch_size * world_size` consecutive windows and rank r gets its `batch_size` slice, so the
global batch is the same for any world size (what makes 1-process and 2-process DDP runs equal).
"""
from __future__ import annotations

from typing import Iterator, Protocol

import torch

from llmlab.errors import UserError


class BatchLoader(Protocol):
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class TokenArrayLoader:
    def __init__(self, tokens, seq_len: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 loop: bool = True, name: str = "tokens"):
        self.tokens = torch.as_tensor(tokens).long().flatten()
        self.seq_len, self.batch_size, self.rank, self.world_size = seq_len, batch_size, rank, world_size
        self.loop = loop
        self.n_windows = (len(self.tokens) - 1) // seq_len
        if len(self.tokens) == 0:
            raise UserError(f"{name}: no tokens (empty data)")
        if self.n_windows < batch_size * world_size:
            raise UserError(f"{name}: {len(self.tokens)} tokens make {self.n_windows} windows of "
                            f"{seq_len + 1}, fewer than one global batch ({batch_size} x {world_size} ranks); "
                            "use more data or a smaller max_length / batch size")
        self.position = 0  # global batches consumed (the same on every rank)
        self.epoch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.n_windows // (self.batch_size * self.world_size)

    def _batch(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = (b * self.world_size + self.rank) * self.batch_size
        starts = (torch.arange(first, first + self.batch_size) * self.seq_len).unsqueeze(1)
        idx = starts + torch.arange(self.seq_len + 1)
        w = self.tokens[idx]
        return w[:, :-1], w[:, 1:]

    def __iter__(self):
        while True:
            if self.position >= self.batches_per_epoch:
                if not self.loop:
                    return
                self.position, self.epoch = 0, self.epoch + 1
            b = self.position
            self.position += 1
            yield self._batch(b)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def state_dict(self) -> dict:
        return {"position": self.position, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.position, self.epoch = int(state["position"]), int(state.get("epoch", 0))
