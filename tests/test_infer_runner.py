"""The inference forward (llmlab/infer/runner.py): its batch-invariance assumptions, batched
prefill, the contiguous batch-1 decoder and the thread tuner."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from llmlab.infer.paged import BlockTable, PagedKVCache
from llmlab.device import num_threads
from llmlab.infer.fused import MKL_RULES, Packed, _lin, fused, invariant_rows, mkl_rule, packed_rows_invariant
from llmlab.infer.runner import ContiguousDecoder, PagedRunner
from llmlab.infer.threads import ThreadTuner, run_layers
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer


def _model(position="rope", **kw):
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, position=position,
                      mlp="gelu" if position == "learned" else "swiglu",
                      norm="layernorm" if position == "learned" else "rmsnorm", **kw)
    return Transformer(cfg).eval()


def _smollm2_shapes(g):
    """A stand-in FusedModel with SmolLM2's layer shapes (q/k/v 960x576, o 576x576, gate/up
    3072x576, down 576x1536; the up shape stands in for the 49152-row LM head, to stay fast)."""
    L = SimpleNamespace(**{f"{k}_w": torch.randn(o, i, generator=g) * 0.05 for k, (o, i) in
                           dict(qkv=(960, 576), o=(576, 576), up=(3072, 576), down=(576, 1536)).items()},
                        qkv_b=None, o_b=None, up_b=None, down_b=None)
    return SimpleNamespace(layers=[L], head_w=L.up_w, head_b=None)


@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_rows_are_invariant_for_invariant_row_counts(threads):
    """The assumption the MKL fallback's batch invariance rests on: under the rule `mkl_rule`
    measures on this machine (a few row counts), a row of x @ W.T has the bits of a 300-row call
    at 1 thread for many more row counts, at every thread count the engine may then use (1 and
    `threads`, or 1 where the rule says so). Fails if the picked rule is wrong here."""
    g = torch.Generator().manual_seed(0)
    w = _smollm2_shapes(g)
    with num_threads(threads):
        rule, pinned = mkl_rule(w)
    assert rule in MKL_RULES and pinned in (None, 1)
    for W in (w.layers[0].qkv_w, w.layers[0].o_w, w.layers[0].up_w, w.layers[0].down_w):
        X = torch.randn(300, W.shape[1], generator=g)
        with num_threads(1):
            ref = F.linear(X, W)
        for t in sorted({1, pinned or threads}):
            with num_threads(t):
                for n in [*range(1, 26), 31, 47, 57, 64, 69, 81, 100, 128, 160, 192, 255, 299]:
                    m = invariant_rows(n, rule)
                    assert torch.equal(F.linear(X[:m], W), ref[:m]), (tuple(W.shape), t, n, m, rule)


def test_mkl_rule_warns_where_no_rule_holds(monkeypatch, capsys):
    """Rows that never match (a BLAS whose rows depend on everything): the first rule, and a warning."""
    from llmlab.infer import fused as fz
    monkeypatch.setattr(fz, "_INVARIANT", {})
    monkeypatch.setattr(fz, "_lin", lambda x, w, b: torch.randn(x.shape[0], w.shape[0]))
    assert fz.mkl_rule(_smollm2_shapes(torch.Generator().manual_seed(0))) == (MKL_RULES[0], None)
    assert "batch invariance is not guaranteed" in capsys.readouterr().err


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch build")
@pytest.mark.parametrize("threads", [1, 2])
def test_packed_rows_are_invariant_for_every_row_count(threads):
    """The engine's matmuls (oneDNN-packed weights, no row padding): a row's bits do not depend on
    how many rows the call has. SmolLM2's shapes; if this fails on another CPU/build, the runner's
    own check (packed_rows_invariant) makes the engine fall back to MKL with padded rows."""
    g = torch.Generator().manual_seed(0)
    for out_f, in_f in [(3072, 576), (576, 1536), (960, 576)]:
        W = Packed(torch.randn(out_f, in_f, generator=g) * 0.05)
        X = torch.randn(300, in_f, generator=g)
        variant = []
        with num_threads(threads), torch.inference_mode():
            ref = _lin(X, W, None)
            for n in (1, 2, 3, 5, 7, 8, 11, 12, 13, 31, 32, 33, 64, 100, 299):
                if not torch.equal(_lin(X[:n], W, None), ref[:n]):
                    variant.append(n)
        if variant:  # e.g. oneDNN's AVX-512 kernels treat M = 1, 2 apart: the runtime check must see it
            L = SimpleNamespace(qkv_w=W, o_w=W, up_w=W, down_w=W, qkv_b=None, o_b=None, up_b=None, down_b=None)
            with num_threads(threads):
                assert not packed_rows_invariant(SimpleNamespace(layers=[L], head_w=W, head_b=None)), variant


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch build")
def test_engine_runner_uses_packed_weights_without_padding():
    model = _model()
    r = PagedRunner(model, PagedKVCache.for_model(model, 8))
    if fused(model).packed() is None:  # this CPU's oneDNN rows vary with M: MKL on padded rows
        assert not r.packed and r.padded_rows(5) == invariant_rows(5, mkl_rule(fused(model))[0])
        return
    assert r.packed and type(r.w.layers[0].up_w) is Packed and r.padded_rows(5) == 5
    one = PagedRunner(model, PagedKVCache.for_model(model, 8), row_pad=1)  # one user: plain weights (gemv)
    assert not one.packed and type(one.w.layers[0].up_w) is torch.Tensor


def test_llmlab_no_dnn_turns_packing_off_for_the_engine(monkeypatch):
    """The one oneDNN decision (llmlab.device.use_onednn) governs the engine's packed weights too."""
    from llmlab import device
    monkeypatch.setattr(device, "_ONEDNN", [None])
    monkeypatch.setenv("LLMLAB_NO_DNN", "1")
    assert not device.use_onednn()
    model = _model()
    r = PagedRunner(model, PagedKVCache.for_model(model, 8))
    rule, pinned = mkl_rule(fused(model))  # MKL on the rows of the rule measured here, at 1 thread if it says so
    assert fused(model).packed() is None and not r.packed and r.padded_rows(5) == invariant_rows(5, rule)
    assert r.fixed_threads == pinned


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
    cost = {1: 0.010, 2: 0.050}
    used = []

    def forward():
        ex, plan = t.start("k", 10), []
        for i in range(10):
            n = t.pick("k", i, ex)
            t.record("k", n, cost[n])
            plan.append(n)
        used.append(plan)

    forward()  # first forward: each count on one layer, then the faster for the other 8
    assert used[0] == [2, 1] + [1] * 8
    for _ in range(8):
        forward()
    assert sum(p.count(2) for p in used[1:]) == 2  # re-tried every 4th forward, one layer each
    cost = {1: 0.010, 2: 0.001}  # the machine got quiet: 2 threads now win
    for _ in range(24):  # (5 re-tries bring the average under the 1-thread cost)
        forward()
    assert used[-1].count(2) >= 9 and t.best("k") == 2
    one = ThreadTuner(1)
    assert [one.pick("k", i, one.start("k", 10)) for i in range(10)] == [1] * 10


def test_run_layers_runs_every_layer_once_in_order():
    seen = []
    run_layers(ThreadTuner(2), "k", 5, seen.append)
    run_layers(None, "k", 3, seen.append)
    run_layers(ThreadTuner(2), "k", 2, seen.append, fixed=1)
    assert seen == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1]
