"""The inference forward (llmlab/infer/runner.py): its batch-invariance assumptions, batched
prefill, the contiguous batch-1 decoder and the thread tuner."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmlab.infer.paged import BlockTable, PagedKVCache
from llmlab.infer.runner import ContiguousDecoder, PagedRunner, ThreadTuner, fused, invariant_rows, num_threads
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer


def _model(position="rope", **kw):
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, position=position,
                      mlp="gelu" if position == "learned" else "swiglu",
                      norm="layernorm" if position == "learned" else "rmsnorm", **kw)
    return Transformer(cfg).eval()


@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_rows_are_invariant_for_invariant_row_counts(threads):
    """The assumption batch invariance rests on: a row of x @ W.T has the same bits for every row
    count invariant_rows() can return (if this fails on another BLAS/CPU, see runner.py)."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3072, 576, generator=g) * 0.05
    X = torch.randn(300, 576, generator=g)
    with num_threads(threads):
        ref = F.linear(X[:4], W)
        for n in (1, 3, 4, 5, 8, 9, 12, 13, 32, 100, 300):
            m = invariant_rows(n)
            assert torch.equal(F.linear(X[:m], W)[:4], ref), (n, m)


def test_prefill_many_equals_one_at_a_time():
    model = _model()
    c = PagedKVCache.for_model(model, 32)
    r = PagedRunner(model, c)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (3, 17, 40)]
    alone = []
    for p in prompts:
        t = BlockTable()
        c.reserve(t, len(p))
        alone.append(r.prefill(t, p))
        c.free(t)
    tables = [BlockTable() for _ in prompts]
    for t, p in zip(tables, prompts):
        c.reserve(t, len(p))
    together = r.prefill_many([(t, p, False) for t, p in zip(tables, prompts)])
    assert all(torch.equal(a, b) for a, b in zip(alone, together))
    assert [t.num_tokens for t in tables] == [3, 17, 40]
    # and decode over all three == each decoded alone (grouped attention, padded rows)
    nxt = [5, 6, 7]
    for t in tables:
        c.reserve(t, t.num_tokens + 1)
    both = r.decode(tables, nxt)
    for i, (t, p) in enumerate(zip(tables, prompts)):
        u = BlockTable()
        c.reserve(u, len(p) + 1)
        r.prefill(u, p)
        assert torch.equal(r.decode([u], [nxt[i]])[0], both[i])
        c.free(u)


@pytest.mark.parametrize("position", ["rope", "learned"])
def test_contiguous_decoder_matches_model(position):
    model = _model(position, attention_bias=position == "learned", mlp_bias=position == "learned")
    ids = torch.randint(0, 97, (30,)).tolist()
    with torch.no_grad():
        ref = model(torch.tensor([ids]))[0]
    dec = ContiguousDecoder(model, 40)
    assert torch.allclose(dec.forward(ids[:12]), ref[11], atol=1e-5)
    assert torch.allclose(dec.forward(ids[12:20]), ref[19], atol=1e-5)  # a chunk after the cache
    for i in range(20, 30):
        assert torch.allclose(dec.forward([ids[i]]), ref[i], atol=1e-5)


def test_fused_weights_follow_in_place_updates():
    model = _model()
    f = fused(model)
    assert fused(model) is f
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.add_(1.0)
    g = fused(model)
    assert g is not f
    assert torch.equal(g.layers[0].qkv_w[:64], model.model.layers[0].self_attn.q_proj.weight)


def test_thread_tuner_tries_each_count_on_one_layer_then_keeps_the_faster():
    t = ThreadTuner(2, explore_every=4)
    plan = t.plan("k", 10)
    assert sorted(set(plan)) == [1, 2] and plan.count(2) == 1  # 2 threads tried on one layer
    t.record("k", plan, [0.010 if n == 1 else 0.050 for n in plan])
    assert t.best("k") == 1
    plans = [t.plan("k", 10) for _ in range(8)]
    assert sum(p.count(2) for p in plans) == 2  # re-tried every 4th forward, one layer each
    for _ in range(5):  # the machine got quiet: 2 threads now win
        t.record("k", [2] * 10, [0.001] * 10)
    assert t.best("k") == 2
    assert ThreadTuner(1).plan("k", 10) == [1] * 10
