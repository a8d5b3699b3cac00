"""Top-layers-only alignment with one frozen, shared, memoised trunk (a CPU budget device).

Alignment on a CPU is dominated by forward passes of the same frozen weights over the same token
rows: GRPO scores a rollout with the reference and then with the policy, PPO runs the policy, the
reference and the critic over one rollout and again per mini-batch, the preference loop runs the
reference and then the policy over the same pairs, and every trained model is evaluated on the
same held-out prompts. When only the top `n_train` blocks (+ final norm) train, everything below
them (embeddings + bottom blocks) is one fixed function shared by every role, so its output for a
given row can be computed once and reused.

`share_frozen_trunk(models, n_train)` rewires LLaMA-style `Transformer`s that start from the same
weights (policy, reference, critic/reward backbones) so they hold one `SharedTrunk` module in place
of their bottom blocks and one embedding; the trunk and embedding are frozen. The trunk memoises
its output per row, keyed by the row's exact input (embedding output, position table and padding
mask), both for plain forwards and for KV-cache prefills (it then also keeps the row's keys and
values and writes them into the caller's cache); decode steps are computed as usual. Two kinds of
row reuse their prefix instead of being recomputed: a rollout row (left-padded prompt + completion)
runs only its completion on top of the prompt's memoised prefill, and a right-padded row (the
preference loop's and the reward model's layout) runs only what follows the longest prefix it
shares with a memoised row, e.g. the rejected answer after the chosen one of the same prompt.
Results are
the plain model's up to float reassociation (tested), and nothing below the top blocks gets a
gradient. The rewired models are for in-process training and evaluation; their state dicts do not
follow the HF layout, so save a model before rewiring it if it must be saved.
"""
from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict

import torch
from torch import nn

from llmlab.errors import UserError


class _RowCache:
    """A KV cache stand-in: records what each trunk layer writes; with `past` (layer -> (k, v) of the
    first `length` positions) it prepends them, so a suffix can run on a memoised prefix."""

    def __init__(self, past: dict | None = None, length: int = 0):
        self.length, self.kv, self.past = length, {}, past or {}

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if layer in self.past:
            pk, pv = self.past[layer]
            k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
        self.kv[layer] = (k, v)
        return k, v


class SharedTrunk(nn.Module):
    MIN_SHARED = 4  # shortest shared prefix worth reusing (tokens)

    def __init__(self, blocks: list[nn.Module], max_bytes: int = 2 << 30):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        for p in self.blocks.parameters():
            p.requires_grad_(False)
        self.memo: OrderedDict[bytes, tuple] = OrderedDict()
        self.max_bytes, self.bytes = max_bytes, 0
        self.hits = self.misses = self.prefix_hits = 0
        self.prefill_lengths: set[int] = set()
        self.shared_index: dict[bytes, bytes] = {}

    def clear(self) -> None:
        self.memo.clear()
        self.bytes = 0
        self.prefill_lengths.clear()
        self.shared_index.clear()

    def _run(self, x, rope, cache, mask):
        for blk in self.blocks:
            x = blk(x, rope, cache, mask)
        return x

    @staticmethod
    def _key(x, rope, mask, b: int, prefill: bool, n: int | None = None) -> bytes:
        """Row b's input over its first n positions (all by default): embedding output, RoPE table and
        the mask among those positions (a causal prefix's output depends on nothing else)."""
        n = x.shape[1] if n is None else n
        h = hashlib.blake2b(digest_size=20)
        h.update(bytes([prefill]) + str((n, x.shape[2])).encode())
        h.update(x[b, :n].detach().contiguous().cpu().numpy().tobytes())
        if rope is not None:
            cos = rope[0]
            h.update((cos[b, :, :n] if cos.dim() == 4 else cos[:n]).detach().contiguous().cpu().numpy().tobytes())
        if mask is not None:
            h.update(mask[b, :, :n, :n].contiguous().cpu().numpy().tobytes())
        return h.digest()

    def _store(self, key: bytes, value: tuple) -> None:
        self.memo[key] = value
        self.bytes += sum(t.numel() * t.element_size() for t in _flat(value))
        while self.bytes > self.max_bytes and self.memo:
            _, old = self.memo.popitem(last=False)
            self.bytes -= sum(t.numel() * t.element_size() for t in _flat(old))

    def _sub(self, x, rope, mask, idx: list[int], start: int = 0):
        """Rows idx from position start on: (x, rope, mask) with the mask's query rows sliced."""
        t = torch.tensor(idx, device=x.device)
        sub_rope = None
        if rope is not None:
            sub_rope = tuple((r.index_select(0, t)[:, :, start:] if r.dim() == 4 else r[start:]) for r in rope)
        sub_mask = mask.index_select(0, t)[:, :, start:] if mask is not None else None
        return x.index_select(0, t)[:, start:], sub_rope, sub_mask

    @staticmethod
    def _real_prefix(mask, b: int, T: int) -> int:
        """Leading real positions of a right-padded row (0 if left-padded); the last position is never
        counted (its own mask row cannot tell padding from a real token)."""
        if mask is None:
            return T - 1
        seen = mask[b, 0, T - 1, :T - 1].long()
        return int(seen.cumprod(0).sum())

    def _prefix_digests(self, x, b: int, n: int) -> list[tuple[int, bytes]]:
        """(m, digest of x[b, :m]) for m = MIN_SHARED..n: a right-padded row's trunk output over its
        first m positions depends on those embeddings only (positions 0..m-1, plain causal mask)."""
        h = hashlib.blake2b(digest_size=20)
        h.update(b"lcp" + str(x.shape[2]).encode())
        rows = x[b, :n].detach().contiguous().cpu().numpy()
        out = []
        for m in range(n):
            h.update(rows[m].tobytes())
            if m + 1 >= self.MIN_SHARED:
                out.append((m + 1, h.copy().digest()))
        return out

    def _compute(self, x, rope, mask, jobs: list[tuple[bytes, int, tuple | None, int]], capture: bool,
                 prefill: bool) -> None:
        """Compute and memoise rows. A job is (key, row, entry, n): run positions n.. of the row on top of
        the first n positions' keys/values taken from a memoised entry (n = 0: the whole row)."""
        groups: dict[int, list] = {}
        for job in jobs:
            groups.setdefault(job[3], []).append(job)
        for n, group in groups.items():
            idx = [g[1] for g in group]
            past = None
            if n:
                past = {blk.self_attn.layer_idx: (torch.stack([g[2][1][i][0][:, :n] for g in group]),
                                                  torch.stack([g[2][1][i][1][:, :n] for g in group]))
                        for i, blk in enumerate(self.blocks)}
            rc = _RowCache(past, n) if (n or capture) else None
            sx, sr, sm = self._sub(x, rope, mask, idx, n)
            out = self._run(sx, sr, rc, sm)
            for j, (k, b, entry, _) in enumerate(group):
                full = torch.cat([entry[0][:n], out[j]]) if n else out[j].clone()
                kv = tuple((rc.kv[blk.self_attn.layer_idx][0][j].clone(), rc.kv[blk.self_attn.layer_idx][1][j].clone())
                           for blk in self.blocks) if capture else None
                self._store(k, (full, kv))
                if prefill:
                    self.prefill_lengths.add(x.shape[1])
                elif capture:
                    for _, d in self._prefix_digests(x, b, self._real_prefix(mask, b, x.shape[1])):
                        self.shared_index[d] = k

    def _shared_source(self, digests) -> tuple[int, tuple | None]:
        """Longest memoised right-padded row that shares a prefix with these digests -> (n, entry)."""
        for n, d in reversed(digests):
            k = self.shared_index.get(d)
            entry = self.memo.get(k) if k is not None else None
            if entry is not None and entry[1] is not None:
                return n, entry
        return 0, None

    def forward(self, x: torch.Tensor, rope, cache=None, mask=None, last_only: bool = False) -> torch.Tensor:
        if x.requires_grad:
            raise UserError("SharedTrunk: the trunk's input requires grad; the embedding must stay frozen")
        if cache is not None and cache.length > 0:  # a decode step: new tokens on a filled cache
            return self._run(x, rope, cache, mask)
        prefill = cache is not None
        B, T = x.shape[:2]
        keys = [self._key(x, rope, mask, b, prefill) for b in range(B)]
        todo: dict[bytes, int] = {}
        for b, k in enumerate(keys):
            if k in self.memo:
                self.memo.move_to_end(k)
            elif k not in todo:
                todo[k] = b
        self.hits += B - len(todo)
        self.misses += len(todo)
        with torch.no_grad():
            if prefill:
                self._compute(x, rope, mask, [(k, b, None, 0) for k, b in todo.items()], True, True)
            else:
                rollout, fresh, later, shared = [], [], [], []
                pending: dict[bytes, int] = {}
                for k, b in todo.items():
                    # (1) a rollout row (left-padded prompt + completion) that extends a memoised prefill
                    hit = None
                    if mask is not None:
                        for n in sorted((n for n in self.prefill_lengths if n < T), reverse=True):
                            hit = self.memo.get(self._key(x, rope, mask, b, True, n))
                            if hit is not None:
                                rollout.append((k, b, hit, n))
                                break
                    if hit is not None:
                        self.prefix_hits += 1
                        continue
                    # (2) a right-padded row sharing a prefix (e.g. the prompt) with a memoised row or
                    #     with a row computed first in this batch
                    L = self._real_prefix(mask, b, T)
                    digests = self._prefix_digests(x, b, L) if L >= self.MIN_SHARED else []
                    n, entry = self._shared_source(digests)
                    n_batch = max((m for m, d in digests if d in pending), default=0)
                    if n_batch > n:
                        later.append((k, b))
                        continue
                    if n:
                        shared.append((k, b, entry, n))
                        self.prefix_hits += 1
                    else:
                        fresh.append((k, b, None, 0))
                    for _, d in digests:
                        pending.setdefault(d, b)
                self._compute(x, rope, mask, rollout, False, False)
                self._compute(x, rope, mask, fresh + shared, True, False)
                wave2 = []
                for k, b in later:
                    L = self._real_prefix(mask, b, T)
                    n, entry = self._shared_source(self._prefix_digests(x, b, L))
                    wave2.append((k, b, entry, n) if n else (k, b, None, 0))
                    self.prefix_hits += bool(n)
                self._compute(x, rope, mask, wave2, True, False)
        got = [self.memo[k] for k in keys]
        if prefill:
            for i, blk in enumerate(self.blocks):
                li = blk.self_attn.layer_idx
                cache.k[li][:B, :, :T] = torch.stack([g[1][i][0] for g in got])
                cache.v[li][:B, :, :T] = torch.stack([g[1][i][1] for g in got])
        return torch.stack([g[0] for g in got])


def _flat(value: tuple) -> list[torch.Tensor]:
    out, kv = [value[0]], value[1]
    if kv:
        for k, v in kv:
            out += [k, v]
    return out


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def share_frozen_trunk(models: list[nn.Module], n_train: int, max_bytes: int = 2 << 30) -> SharedTrunk:
    """Rewire `models` (Transformers with identical bottom blocks and embedding) in place to share one
    frozen, memoised trunk; only their top `n_train` blocks and final norm keep requires_grad (the LM
    head stays frozen: with tied embeddings it is the shared embedding)."""
    if not models:
        raise UserError("share_frozen_trunk: no models")
    base = models[0]
    L = len(base.model.layers)
    if not 1 <= n_train < L:
        raise UserError(f"n_train must be in [1, {L - 1}] for a {L}-layer model, got {n_train}")
    cut = L - n_train
    for m in models:
        if getattr(m.config, "position", "rope") != "rope":
            raise UserError("share_frozen_trunk supports RoPE models only")
        if len(m.model.layers) != L or isinstance(m.model.layers[0], SharedTrunk):
            raise UserError("share_frozen_trunk: models differ in depth or are already rewired")
        if m is not base and not (_same(m.model.embed_tokens, base.model.embed_tokens)
                                  and all(_same(a, b) for a, b in zip(m.model.layers[:cut], base.model.layers[:cut]))):
            raise UserError("share_frozen_trunk: the models' bottom blocks or embeddings differ")
    trunk = SharedTrunk(list(base.model.layers[:cut]), max_bytes)
    emb = base.model.embed_tokens
    emb.weight.requires_grad_(False)
    for m in models:
        top = list(m.model.layers[cut:])
        m.model.layers = nn.ModuleList([trunk] + top)
        m.model.embed_tokens = emb
        if m.config.tie_word_embeddings:
            m.lm_head.weight = emb.weight
        m.lm_head.weight.requires_grad_(False)
        for blk in top:
            blk.requires_grad_(True)
        m.model.norm.requires_grad_(True)
    return trunk


def fork(model: nn.Module) -> nn.Module:
    """A deep copy of a rewired model that keeps sharing its trunk and embedding (and a tied LM
    head): a fresh policy, reference or critic costs its top blocks only. In the copy, everything
    but the trunk, the embedding and the LM head trains."""
    trunk = next((m for m in model.modules() if isinstance(m, SharedTrunk)), None)
    if trunk is None:
        raise UserError("fork: the model has no shared trunk (call share_frozen_trunk first)")
    backbone = model.backbone if hasattr(model, "backbone") else model
    emb = backbone.model.embed_tokens
    memo = {id(trunk): trunk, id(emb): emb, id(emb.weight): emb.weight}
    if backbone.lm_head.weight is emb.weight:
        memo[id(backbone.lm_head.weight)] = emb.weight
    new = copy.deepcopy(model, memo)
    shared = {id(p) for p in trunk.parameters()} | {id(emb.weight), id(new_head(new).weight)}
    for p in new.parameters():  # the copy trains even if the original was frozen (e.g. as a reference)
        p.requires_grad_(id(p) not in shared)
    return new


def new_head(model: nn.Module) -> nn.Module:
    return (model.backbone if hasattr(model, "backbone") else model).lm_head
