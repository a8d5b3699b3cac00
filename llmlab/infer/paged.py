"""Paged KV cache (Kwon et al. 2023, PagedAttention / vLLM).

The cache is one pool of fixed-size blocks per layer, k/v of shape
(num_blocks, block_size, n_kv_heads, head_dim). A sequence owns a *block table*: the list of
block ids holding its positions 0..15, 16..31, ... so memory is allocated 16 tokens at a time
and never needs to be contiguous; waste is < one block per sequence.

Blocks are reference counted:
- fork (beam search, n parallel samples of one prompt) shares every block of the parent;
  the first write into a shared, partly filled block copies it first (copy-on-write);
- prefix sharing: a *full* block is named by the hash of (previous block's hash, its 16 tokens),
  so a new request whose prompt starts with the same tokens reuses those blocks instead of
  recomputing them. Freed hashed blocks stay cached (evictable, LRU) until the space is needed.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch


class NoFreeBlocks(RuntimeError):
    """The pool is exhausted: the scheduler must wait, preempt or reject."""


class BlockAllocator:
    """Free list + reference counts + an LRU of freed blocks that still hold a cached prefix."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.free = list(range(num_blocks - 1, -1, -1))  # pop() hands out low ids first
        self.ref = [0] * num_blocks
        self.evictable: OrderedDict[int, None] = OrderedDict()  # ref 0 but hashed (prefix cache)
        self.block_hash: dict[int, object] = {}  # block -> its prefix key
        self.by_hash: dict[object, int] = {}  # prefix key -> block
        self.evictions = 0  # cached prefix blocks reused for other data (LRU)

    @property
    def num_free(self) -> int:
        """Blocks allocatable now: never used, or holding a cached prefix nobody references."""
        return len(self.free) + len(self.evictable)

    @property
    def num_cached(self) -> int:
        """Blocks named in the prefix cache (referenced or not)."""
        return len(self.block_hash)

    def allocate(self) -> int:
        if self.free:
            b = self.free.pop()
        elif self.evictable:
            b, _ = self.evictable.popitem(last=False)  # least recently used cached block
            del self.by_hash[self.block_hash.pop(b)]
            self.evictions += 1
        else:
            raise NoFreeBlocks(f"all {self.num_blocks} KV blocks are in use")
        self.ref[b] = 1
        return b

    def incref(self, b: int) -> None:
        if self.ref[b] == 0:  # revive a cached block
            self.evictable.pop(b)
        self.ref[b] += 1

    def decref(self, b: int) -> None:
        if self.ref[b] <= 0:
            raise RuntimeError(f"block {b} freed twice")
        self.ref[b] -= 1
        if self.ref[b] == 0:
            if b in self.block_hash:
                self.evictable[b] = None
            else:
                self.free.append(b)

    def register(self, b: int, key) -> None:
        """Name a full block by its prefix key so later prompts can share it."""
        if b in self.block_hash or key in self.by_hash:
            return
        self.block_hash[b] = key
        self.by_hash[key] = b

    def lookup(self, key) -> int | None:
        return self.by_hash.get(key)


@dataclass
class BlockTable:
    """One sequence's view of the cache: block ids and how many positions are filled."""
    blocks: list[int] = field(default_factory=list)
    num_tokens: int = 0
    hashed: int = 0  # leading blocks already registered in the prefix cache
    last_key: object = None  # prefix key of block hashed-1


class PagedKVCache:
    def __init__(self, num_layers: int, num_blocks: int, n_kv_heads: int, head_dim: int,
                 block_size: int = 16, dtype: torch.dtype = torch.float32, device="cpu"):
        shape = (num_blocks + 1, block_size, n_kv_heads, head_dim)
        # empty, not zeros: pages are committed only when blocks are first written, and a slot is
        # never read before it is written (attention reads positions < num_tokens only). The one
        # extra block at the end (`null_slot`) is all zeros and never allocated: batched decode
        # points the padding keys of short sequences at it (masked, but finite: 0 * NaN is NaN).
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        for pool in (*self.k, *self.v):
            pool[num_blocks].zero_()
        self.null_slot = num_blocks * block_size
        self.block_size = block_size
        self.alloc = BlockAllocator(num_blocks)

    @classmethod
    def for_model(cls, model, num_blocks: int, block_size: int = 16) -> "PagedKVCache":
        cfg, p = model.config, next(model.parameters())
        return cls(cfg.num_hidden_layers, num_blocks, cfg.num_key_value_heads, cfg.head_dim,
                   block_size, p.dtype, p.device)

    def blocks_needed(self, table: BlockTable, new_len: int) -> int:
        """Blocks to allocate so `table` can hold new_len positions (counting one COW copy)."""
        need = -(-new_len // self.block_size) - len(table.blocks)
        if self._shared_tail(table) and new_len > table.num_tokens:
            need += 1
        return max(need, 0)

    def _shared_tail(self, table: BlockTable) -> bool:
        """Is the block that the next write lands in partly filled and shared?"""
        if table.num_tokens % self.block_size == 0 or not table.blocks:
            return False
        return self.alloc.ref[table.blocks[table.num_tokens // self.block_size]] > 1

    def reserve(self, table: BlockTable, new_len: int) -> None:
        """Make room for positions table.num_tokens..new_len-1, copying a shared tail block first."""
        if self.blocks_needed(table, new_len) > self.alloc.num_free:
            raise NoFreeBlocks(f"need {self.blocks_needed(table, new_len)} blocks, {self.alloc.num_free} free")
        if self._shared_tail(table) and new_len > table.num_tokens:
            i = table.num_tokens // self.block_size
            old, new = table.blocks[i], self.alloc.allocate()
            for pool in (*self.k, *self.v):
                pool[new].copy_(pool[old])
            self.alloc.decref(old)
            table.blocks[i] = new
        while len(table.blocks) * self.block_size < new_len:
            table.blocks.append(self.alloc.allocate())

    def fork(self, table: BlockTable) -> BlockTable:
        for b in table.blocks:
            self.alloc.incref(b)
        return BlockTable(list(table.blocks), table.num_tokens, table.hashed, table.last_key)

    def free(self, table: BlockTable) -> None:
        for b in table.blocks:
            self.alloc.decref(b)
        table.blocks, table.num_tokens, table.hashed, table.last_key = [], 0, 0, None

    def truncate(self, table: BlockTable, n: int) -> None:
        """Keep positions 0..n-1 (speculative decoding drops rejected drafts); frees blocks past them."""
        keep = -(-n // self.block_size)
        for b in table.blocks[keep:]:
            self.alloc.decref(b)
        del table.blocks[keep:]
        table.num_tokens = min(table.num_tokens, n)

    def shared_blocks(self, a: list[int], b: list[int]) -> int:
        """Leading full blocks two prompts have in common (the last token of `a` excluded)."""
        bs, n = self.block_size, 0
        while (n + 1) * bs < len(a) and (n + 1) * bs <= len(b) and a[n * bs:(n + 1) * bs] == b[n * bs:(n + 1) * bs]:
            n += 1
        return n

    # prefix sharing -------------------------------------------------------------------------
    def match_prefix(self, tokens: list[int], table: BlockTable) -> int:
        """Attach cached full blocks matching tokens' leading blocks; returns positions reused.
        The last prompt token is always left to compute (its logits start decoding)."""
        bs, key = self.block_size, None
        for i in range((len(tokens) - 1) // bs):
            key = (hash(key), tuple(tokens[i * bs:(i + 1) * bs]))
            b = self.alloc.lookup(key)
            if b is None:
                break
            self.alloc.incref(b)
            table.blocks.append(b)
            table.num_tokens += bs
            table.hashed, table.last_key = i + 1, key
        return table.num_tokens

    def register_prefix(self, table: BlockTable, tokens: list[int]) -> None:
        """Name the newly filled full blocks of `table` (tokens = all its tokens so far)."""
        bs = self.block_size
        while (table.hashed + 1) * bs <= table.num_tokens:
            i = table.hashed
            key = (hash(table.last_key), tuple(tokens[i * bs:(i + 1) * bs]))
            self.alloc.register(table.blocks[i], key)
            table.hashed, table.last_key = i + 1, key

    # swap (preemption without recompute) ----------------------------------------------------
    def swap_out(self, table: BlockTable) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copy a sequence's KV to host memory and free its blocks."""
        idx = torch.tensor(table.blocks, dtype=torch.long)
        saved = [(k[idx].cpu(), v[idx].cpu()) for k, v in zip(self.k, self.v)]
        n = table.num_tokens
        self.free(table)
        table.num_tokens = n
        return saved

    def swap_in(self, table: BlockTable, saved) -> None:
        n, table.num_tokens = table.num_tokens, 0
        self.reserve(table, n)
        table.num_tokens = n
        idx = torch.tensor(table.blocks, dtype=torch.long)
        for (k, v), (sk, sv) in zip(zip(self.k, self.v), saved):
            k[idx] = sk.to(k.device)
            v[idx] = sv.to(v.device)

    # reading / writing ----------------------------------------------------------------------
    def slots(self, table: BlockTable, start: int, end: int) -> torch.Tensor:
        """Flat slot indices (block * block_size + offset) of positions start..end-1."""
        pos = torch.arange(start, end)
        blocks = torch.tensor(table.blocks, dtype=torch.long)[pos // self.block_size]
        return blocks * self.block_size + pos % self.block_size

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: (N, n_kv_heads, head_dim) for N positions."""
        kp, vp = self.k[layer], self.v[layer]
        kp.view(-1, *kp.shape[2:])[slots] = k
        vp.view(-1, *vp.shape[2:])[slots] = v

    def gather(self, layer: int, table: BlockTable, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> k, v of positions 0..length-1 as (n_kv_heads, length, head_dim)."""
        nb = -(-length // self.block_size)
        idx = torch.tensor(table.blocks[:nb], dtype=torch.long)
        k = self.k[layer][idx].flatten(0, 1)[:length]
        v = self.v[layer][idx].flatten(0, 1)[:length]
        return k.transpose(0, 1), v.transpose(0, 1)
