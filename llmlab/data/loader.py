"""Stream fixed-length (x, y) windows from token shards: seeded, DDP-sharded, exactly resumable.

Windows: shard k with n_k tokens gives floor((n_k - 1) / T) windows of T + 1 tokens starting
every T tokens (x = w[:-1], y = w[1:]); consecutive windows share one boundary token, so every
token of the shard but the first is a target exactly once per epoch (up to the tail that does not
fill a window). Windows never cross shard ends. Windows may cross document
boundaries (the EOS token separates documents), as in GPT-style packing.

Order: epoch e visits the windows in `default_rng([seed, e]).permutation(W)` order (or in file
order with shuffle=False). Rank r of `world_size` takes perm[r::world_size], cut to
floor(W / world_size) windows so all ranks take the same number of steps, and batches them by
`batch_size`, dropping the last partial batch. Hence at every step the union of the ranks'
batches is exactly the batch a single process with batch_size * world_size would see: DDP and
single-process runs consume identical data.

Resume: the position is (epoch, step), plain ints; `state_dict()` after k batches, then
`load_state_dict()` on a fresh loader makes the next batch batch k + 1, bit for bit.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from llmlab.data.shards import open_shards
from llmlab.errors import UserError


class TokenWindowLoader:
    def __init__(self, shard_dir: str | Path, seq_len: int, batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle: bool = True):
        if seq_len < 1 or batch_size < 1:
            raise UserError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.shards = open_shards(shard_dir)
        self.shard_dir = str(shard_dir)
        self.seq_len, self.batch_size = seq_len, batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle = seed, shuffle
        per_shard = [(s.tokens.size - 1) // seq_len for s in self.shards]
        self.win_shard = np.repeat(np.arange(len(self.shards)), per_shard)
        self.win_start = np.concatenate([np.arange(c) * seq_len for c in per_shard]).astype(np.int64)
        self.num_windows = int(self.win_shard.size)
        self.batches_per_epoch = (self.num_windows // world_size) // batch_size
        if self.batches_per_epoch == 0:
            raise UserError(f"{shard_dir}: {self.num_windows} windows of {seq_len + 1} tokens is less than one "
                            f"batch ({batch_size} x {world_size} ranks); use more data or a smaller "
                            "seq_len/batch_size")
        self.epoch = 0
        self.step = 0
        self._order_epoch = -1
        self._order: np.ndarray | None = None

    def __len__(self) -> int:
        return self.batches_per_epoch

    @property
    def tokens_per_batch(self) -> int:
        return self.batch_size * self.seq_len

    def _rank_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            if self.shuffle:
                perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_windows)
            else:
                perm = np.arange(self.num_windows)
            per_rank = self.num_windows // self.world_size
            self._order = perm[self.rank::self.world_size][:per_rank]
            self._order_epoch = self.epoch
        return self._order

    def batch_windows(self) -> np.ndarray:
        """Window ids of the next batch (without advancing)."""
        if self.step >= self.batches_per_epoch:
            self.epoch += 1
            self.step = 0
        b = self.batch_size
        return self._rank_order()[self.step * b:(self.step + 1) * b]

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.batch_windows()
        self.step += 1
        T = self.seq_len
        w = np.stack([self.shards[self.win_shard[i]].tokens[self.win_start[i]:self.win_start[i] + T + 1]
                      for i in ids]).astype(np.int64)
        t = torch.from_numpy(w)
        return t[:, :-1], t[:, 1:]

    def state_dict(self) -> dict:
        return {"epoch": int(self.epoch), "step": int(self.step), "seed": int(self.seed),
                "num_windows": int(self.num_windows), "seq_len": int(self.seq_len),
                "batch_size": int(self.batch_size), "rank": int(self.rank), "world_size": int(self.world_size)}

    def load_state_dict(self, state: dict) -> None:
        for k in ("seed", "num_windows", "seq_len", "batch_size", "world_size"):
            if k in state and int(state[k]) != getattr(self, k):
                raise UserError(f"loader state does not match this loader: {k} = {state[k]} in the state, "
                                f"{getattr(self, k)} here (different data or settings)")
        try:
            epoch, step = int(state["epoch"]), int(state["step"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"loader state needs integer 'epoch' and 'step', got {state!r}") from None
        if epoch < 0 or not 0 <= step <= self.batches_per_epoch:
            raise UserError(f"loader state out of range: epoch={epoch}, step={step} "
                            f"(batches per epoch: {self.batches_per_epoch})")
        self.epoch, self.step = epoch, step
