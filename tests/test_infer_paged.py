"""Paged KV cache: allocator, copy-on-write forks, prefix sharing, swap; paged forward == model forward."""
from __future__ import annotations

import pytest
import torch

from llmlab.infer.paged import BlockAllocator, BlockTable, NoFreeBlocks, PagedKVCache
from llmlab.infer.runner import PagedRunner
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer


def test_allocator_refcounts_and_exhaustion():
    a = BlockAllocator(3)
    b = [a.allocate() for _ in range(3)]
    assert sorted(b) == [0, 1, 2] and a.num_free == 0
    with pytest.raises(NoFreeBlocks):
        a.allocate()
    a.incref(b[0])
    a.decref(b[0])
    assert a.num_free == 0
    a.decref(b[0])
    assert a.num_free == 1
    with pytest.raises(RuntimeError):
        a.decref(b[0])


def test_fork_shares_blocks_and_copies_on_write():
    c = PagedKVCache(1, 8, 1, 2, block_size=4)
    t = BlockTable()
    c.reserve(t, 6)
    c.write(0, c.slots(t, 0, 6), torch.arange(12.).view(6, 1, 2), torch.zeros(6, 1, 2))
    t.num_tokens = 6
    f = c.fork(t)
    assert f.blocks == t.blocks and c.alloc.ref[t.blocks[1]] == 2
    c.reserve(f, 7)  # the shared, half-full block 1 is copied before f writes into it
    assert f.blocks[0] == t.blocks[0] and f.blocks[1] != t.blocks[1]
    assert c.alloc.ref[t.blocks[0]] == 2 and c.alloc.ref[t.blocks[1]] == 1
    k_t, _ = c.gather(0, t, 6)
    k_f, _ = c.gather(0, f, 6)
    assert torch.equal(k_t, k_f)
    c.free(t)
    c.free(f)
    assert c.alloc.num_free == 8


def test_prefix_sharing_reuses_full_blocks_and_keeps_last_token():
    c = PagedKVCache(1, 8, 1, 2, block_size=4)
    toks = list(range(10))
    t = BlockTable()
    c.reserve(t, 10)
    t.num_tokens = 10
    c.register_prefix(t, toks)
    assert t.hashed == 2
    u = BlockTable()
    assert c.match_prefix(toks[:9] + [99], u) == 8  # two full blocks shared
    assert u.blocks == t.blocks[:2]
    w = BlockTable()
    assert c.match_prefix(toks[:8], w) == 4  # the last prompt token is always recomputed
    v = BlockTable()
    assert c.match_prefix([0, 1, 2, 5] + toks[4:], v) == 0  # different first block: nothing shared
    for x in (t, u, w):
        c.free(x)
    # freed hashed blocks stay cached until the space is needed
    z = BlockTable()
    assert c.match_prefix(toks, z) == 8
    c.free(z)


def test_swap_out_in_roundtrip():
    c = PagedKVCache(2, 6, 1, 2, block_size=4)
    t = BlockTable()
    c.reserve(t, 5)
    for layer in range(2):
        c.write(layer, c.slots(t, 0, 5), torch.randn(5, 1, 2), torch.randn(5, 1, 2))
    t.num_tokens = 5
    before = [c.gather(layer, t, 5) for layer in range(2)]
    saved = c.swap_out(t)
    assert c.alloc.num_free == 6 and t.num_tokens == 5
    other = BlockTable()
    c.reserve(other, 4)  # someone else takes a block meanwhile
    c.swap_in(t, saved)
    for layer in range(2):
        assert all(torch.equal(a, b) for a, b in zip(before[layer], c.gather(layer, t, 5)))


@pytest.mark.parametrize("position", ["rope", "learned"])
def test_paged_forward_matches_model(position):
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, position=position,
                      mlp="gelu" if position == "learned" else "swiglu", norm="layernorm" if position == "learned"
                      else "rmsnorm")
    model = Transformer(cfg).eval()
    ids = torch.randint(0, 97, (40,)).tolist()
    with torch.no_grad():
        ref = model(torch.tensor([ids]))[0]
    c = PagedKVCache.for_model(model, 16, block_size=16)
    r = PagedRunner(model, c)
    t = BlockTable()
    c.reserve(t, 30)
    r.prefill(t, ids[:13])
    last = r.prefill(t, ids[13:30])  # a chunk after cached positions
    assert torch.allclose(last, ref[29], atol=1e-5)
    other = BlockTable()
    c.reserve(other, 5)
    r.prefill(other, ids[:5])
    for i in range(30, 40):
        c.reserve(t, i + 1)
        c.reserve(other, other.num_tokens + 1)
        out = r.decode([t, other], [ids[i], ids[other.num_tokens]])
        assert torch.allclose(out[0], ref[i], atol=1e-5)


def test_blocks_allocated_on_demand_waste_below_one_block():
    c = PagedKVCache(1, 16, 1, 2, block_size=16)
    t = BlockTable()
    for n in range(1, 100):
        c.reserve(t, n)
        t.num_tokens = n
        assert len(t.blocks) == -(-n // 16)
        assert len(t.blocks) * 16 - n <= 15
    c.free(t)
    assert c.alloc.num_free == 16
