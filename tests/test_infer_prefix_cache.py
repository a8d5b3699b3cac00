"""Prefix caching across requests: identical outputs with and without, reference counts, LRU
eviction of unreferenced cached blocks before any live request is preempted."""
from __future__ import annotations

import torch

from llmlab.infer.engine import Engine
from llmlab.infer.paged import BlockAllocator
from llmlab.infer.sampling import SamplingParams


def _shared_prefix_prompts(n, prefix_len=70, seed=0):
    g = torch.Generator().manual_seed(seed)
    system = torch.randint(0, 97, (prefix_len,), generator=g).tolist()
    return [system + torch.randint(0, 97, (int(torch.randint(1, 30, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def test_outputs_identical_with_and_without_prefix_caching(tiny):
    prompts = _shared_prefix_prompts(8)
    greedy = SamplingParams(max_new_tokens=12, ignore_eos=True)
    sampled = [SamplingParams(max_new_tokens=12, temperature=0.8, seed=i, ignore_eos=True) for i in range(8)]
    for params in (greedy, sampled):
        off = Engine(tiny, None, num_blocks=128, prefix_caching=False)
        on = Engine(tiny, None, num_blocks=128)
        ref = off.generate(prompts, params)
        first = on.generate(prompts[:1], params if not isinstance(params, list) else params[:1])  # warms the cache
        assert first == ref[:1]
        assert on.generate(prompts, params) == ref
        assert on.stats["prefix_hit_tokens"] >= 8 * 64  # every request reused the 4 full shared blocks
        assert off.stats["prefix_hit_tokens"] == 0


def test_reference_counts_return_to_zero_and_blocks_stay_cached(tiny):
    eng = Engine(tiny, None, num_blocks=64)
    eng.generate(_shared_prefix_prompts(6), SamplingParams(max_new_tokens=5, n=2, ignore_eos=True))
    a = eng.cache.alloc
    assert all(r == 0 for r in a.ref)
    assert a.num_free == a.num_blocks  # cached blocks count as free
    assert a.num_cached >= 4 and len(a.evictable) == a.num_cached


def test_cached_blocks_are_evicted_lru_before_live_requests_are_preempted(tiny):
    eng = Engine(tiny, None, num_blocks=24, prefill_chunk=64, max_prefill_tokens=128)
    old = _shared_prefix_prompts(1, prefix_len=100, seed=1)
    eng.generate(old, SamplingParams(max_new_tokens=2, ignore_eos=True))
    cached = eng.cache.alloc.num_cached
    assert cached >= 6
    # two live requests that fit the pool only without the cached prefix: it must make way
    new = _shared_prefix_prompts(1, prefix_len=150, seed=2) + _shared_prefix_prompts(1, prefix_len=150, seed=3)
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    live = sum(-(-(len(p) + 8) // 16) for p in new)
    assert live <= 24 < live + cached  # room for both only if the cached blocks go
    out = eng.generate(new, params)
    assert eng.stats["preempted"] == 0
    assert eng.cache.alloc.evictions > 0
    assert out == Engine(tiny, None, num_blocks=64, prefix_caching=False).generate(new, params)


def test_allocator_evicts_the_least_recently_used_cached_block():
    a = BlockAllocator(3)
    b0, b1, b2 = a.allocate(), a.allocate(), a.allocate()
    for b, key in ((b0, "k0"), (b1, "k1"), (b2, "k2")):
        a.register(b, key)
    for b in (b0, b1, b2):
        a.decref(b)  # freed in order 0, 1, 2: all cached, evictable
    a.incref(a.lookup("k0"))  # a new request reuses k0 ...
    a.decref(b0)  # ... and releases it: now the most recently used
    assert a.allocate() == b1 and a.lookup("k1") is None and a.lookup("k0") == b0
    assert a.evictions == 1


def test_requests_arriving_together_compute_a_shared_long_prefix_once(tiny):
    prompts = _shared_prefix_prompts(6, prefix_len=200, seed=3)
    params = SamplingParams(max_new_tokens=3, ignore_eos=True)
    eng = Engine(tiny, None, num_blocks=128, prefill_chunk=64, max_prefill_tokens=128)
    out = eng.generate(prompts, params)
    assert eng.stats["prefix_hit_tokens"] == 5 * 192  # all but the first reuse its 12 full blocks
    assert out == Engine(tiny, None, num_blocks=128, prefix_caching=False).generate(prompts, params)
