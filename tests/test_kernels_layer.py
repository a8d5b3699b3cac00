"""The C decoder layers (llmlab/kernels/layer.c): a decode step's every layer in one call, against
the Python path (torch ops + the same block kernel) on a small block-quantized LLaMA, for every
instruction-set build this CPU runs; batch invariance; the switch and the fallbacks."""
from __future__ import annotations

import pytest
import torch

from llmlab.infer.engine import Engine
from llmlab.infer.fused import fused
from llmlab.infer.paged import BlockTable, PagedKVCache
from llmlab.infer.runner import ContiguousDecoder, PagedRunner
from llmlab.infer.sampling import SamplingParams
from llmlab.kernels import build as kernel
from llmlab.kernels import ggml
from llmlab.kernels import layer as c_layer
from llmlab.model.config import ModelConfig
from tiny_quant import block_model

pytestmark = pytest.mark.skipif(c_layer.load() is None, reason="no C compiler: the kernels are not built")


def _model(bias=False, fmt_of=lambda n: "Q4_0" if "mlp" in n else ("Q4_1" if "o_proj" in n else "Q8_0"), layers=2):
    cfg = ModelConfig(vocab_size=128, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=96, max_position_embeddings=256,
                      initializer_range=0.3, tie_word_embeddings=True, attention_bias=bias, mlp_bias=bias)
    # norm weights not all ones (a norm weight that is dropped shows), biases random
    return block_model(cfg, fmt_of, 0, lambda name, p: p.uniform_(0.5, 1.5) if "norm" in name else p.normal_(0, 0.3))


def _decode(model, ids, steps, on: bool, monkeypatch, expect_c: bool | None = None):
    monkeypatch.setenv("LLMLAB_C_LAYERS", "1" if on else "0")
    calls = []
    run = c_layer.Layers.run
    monkeypatch.setattr(c_layer.Layers, "run", lambda self, *a: calls.append(1) or run(self, *a))
    dec = ContiguousDecoder(model, 64)
    out = [dec.forward(ids)] + [dec.forward([t]) for t in steps]
    expect_c = on if expect_c is None else expect_c
    assert len(calls) == (len(steps) if expect_c else 0)  # the path under test really ran
    return torch.stack(out)


def _isas():
    out = ["native", "portable"]
    flags = kernel._cpu_flags().split()
    if "avx2" in flags and "fma" in flags:
        out.insert(1, "avx2")
    return out


@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("bias", [False, True])
def test_c_layers_match_the_python_path(isa, bias, monkeypatch):
    monkeypatch.setattr(kernel, "_LIB", [kernel.open_lib(isa)])  # products of this build on both paths
    monkeypatch.setattr(c_layer, "_LIB", [c_layer._open_library(isa)])
    model = _model(bias)
    ids, steps = [1, 5, 9, 77, 3, 8, 9] * 5, [4, 100, 7, 2, 99, 0, 127, 64]  # past the 32-key mark too
    ref = _decode(model, ids, steps, False, monkeypatch)
    got = _decode(model, ids, steps, True, monkeypatch)
    assert torch.equal(got[0], ref[0])  # the prompt's forward is the Python one
    err = (got - ref).abs().max().item()
    assert err <= 2e-5 * ref.abs().max().item(), err  # norms/SiLU round differently; ~1e-6 relative measured
    assert torch.equal(got.argmax(-1), ref.argmax(-1))


def test_c_layers_with_int8_activations(monkeypatch):
    if not ggml.int8_simd():
        pytest.skip("no SIMD int8 dot products here")
    monkeypatch.setenv("LLMLAB_INT8_ACTIVATIONS", "1")
    model = _model()
    ids, steps = [3, 1, 4, 1, 5, 9, 2, 6], [5, 3, 5, 8, 9, 7]
    ref = _decode(model, ids, steps, False, monkeypatch)
    got = _decode(model, ids, steps, True, monkeypatch)
    monkeypatch.setenv("LLMLAB_INT8_ACTIVATIONS", "0")
    exact = _decode(model, ids, steps, False, monkeypatch)
    # int8 rounds activations: a tiny norm difference may flip one rounding, so the bound is the
    # int8 option's own error (exact vs int8), not 1e-6
    assert (got - ref).abs().max() <= 0.5 * (exact - ref).abs().max() + 1e-5
    assert not torch.equal(exact, ref)  # the int8 option was really on


def test_paged_decode_through_c_is_batch_invariant_and_matches_contiguous(monkeypatch):
    model = _model()
    monkeypatch.setenv("LLMLAB_C_LAYERS", "1")
    c = PagedKVCache.for_model(model, 64)
    r = PagedRunner(model, c, threads=1)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 128, (n,), generator=g).tolist() for n in (3, 17, 40)]
    tables = [BlockTable() for _ in prompts]
    for t, p in zip(tables, prompts):
        c.reserve(t, len(p) + 1)
        r.prefill(t, p)
    calls = []
    run = c_layer.Layers.run
    monkeypatch.setattr(c_layer.Layers, "run", lambda self, *a: calls.append(1) or run(self, *a))
    together = r.decode(tables, [5, 6, 7])
    assert calls
    for i, p in enumerate(prompts):
        u = BlockTable()
        c.reserve(u, len(p) + 1)
        r.prefill(u, p)
        assert torch.equal(r.decode([u], [5 + i])[0], together[i])
        c.free(u)
        dec = ContiguousDecoder(model, 64)
        dec.forward(p)
        assert torch.allclose(dec.forward([5 + i]), together[i], atol=1e-5)
    greedy = SamplingParams(max_new_tokens=6, ignore_eos=True)
    outs = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("LLMLAB_C_LAYERS", flag)
        outs[flag] = Engine(model, None, num_blocks=64, max_num_seqs=4).generate(prompts, greedy)
    assert outs["0"] == outs["1"]


def test_fallbacks(monkeypatch):
    model = _model()
    assert c_layer.Layers.of(fused(model)) is not None
    mixed = _model(fmt_of=lambda n: "Q8_0")
    with torch.no_grad():
        mixed.model.layers[1].mlp.down_proj.weight.add_(1.0)  # changed since loading: no blocks for it
    assert c_layer.Layers.of(fused(mixed)) is None  # a matrix without blocks: the Python path
    _decode(mixed, [1, 2, 3], [4, 5], True, monkeypatch, expect_c=False)  # and it still decodes, in Python
    monkeypatch.setenv("LLMLAB_C_LAYERS", "0")
    assert not c_layer.enabled()


def test_c_layers_bits_do_not_depend_on_threads(monkeypatch):
    model = _model()
    monkeypatch.setenv("LLMLAB_C_LAYERS", "1")
    monkeypatch.setattr(ggml, "PARALLEL_MACS", 1)  # every product and the attention split across threads
    seen, run = [], c_layer.Layers.run
    monkeypatch.setattr(c_layer.Layers, "run", lambda self, *a: seen.append(a[9]) or run(self, *a))
    outs = []
    for n in (1, 2):
        c = PagedKVCache.for_model(model, 64)
        r = PagedRunner(model, c, threads=n)
        tables = [BlockTable() for _ in range(3)]
        for t, p in zip(tables, ([1, 2, 3], [4] * 20, list(range(40)))):
            c.reserve(t, len(p) + 2)
            r.prefill(t, p)
        outs.append(torch.stack([r.decode(tables, [5, 6, 7]), r.decode(tables, [8, 9, 10])]))
    assert seen == [1, 1, 2, 2]  # the thread count the C call got
    assert torch.equal(outs[0], outs[1])


def test_speculative_verification_through_c_equals_plain_decoding(monkeypatch):
    """Verification rows (k drafted tokens, each attending up to its own position) run through the
    C layers too, so greedy speculative output is plain decoding's, token for token."""
    model = _model()
    monkeypatch.setenv("LLMLAB_C_LAYERS", "1")
    prompts = [[5, 6, 7, 8, 9, 10, 5, 6, 7, 8, 9, 10, 5, 6, 7], [3, 4] * 12]
    params = SamplingParams(max_new_tokens=16, ignore_eos=True)
    plain = Engine(model, None, num_blocks=64, max_num_seqs=1, row_pad=1).generate(prompts, params)
    calls, run = [], c_layer.Layers.run
    monkeypatch.setattr(c_layer.Layers, "run", lambda self, *a: calls.append(a[0].shape[0]) or run(self, *a))
    eng = Engine(model, None, num_blocks=64, max_num_seqs=1, row_pad=1, speculative="ngram",
                 speculative_fallback=False)
    assert eng.generate(prompts, params) == plain
    assert max(calls) > 1  # a verification forward (several rows of one sequence) ran in C


def test_c_layers_thread_counts_are_tuned_per_layer(monkeypatch):
    """The thread tuner measures the C call layer by layer (its own timers), as in Python."""
    from llmlab.infer.threads import ThreadTuner
    model = _model()
    monkeypatch.setenv("LLMLAB_C_LAYERS", "1")
    seen, run = [], c_layer.Layers.run
    monkeypatch.setattr(c_layer.Layers, "run", lambda self, *a: seen.append(list(a[9])) or run(self, *a))
    tuner = ContiguousDecoder._tuners[model] = ThreadTuner(2, explore_every=2)
    dec = ContiguousDecoder(model, 64)
    ref = ContiguousDecoder(model, 64)
    dec.forward([1, 2, 3])
    ref.forward([1, 2, 3])
    for t in range(4, 10):
        assert torch.equal(dec.forward([t]), ref.forward([t]))
    assert seen[0] == [2, 1]  # the first forward tries each count on one layer
    assert all(len(set(s)) == 2 for s in seen[1::2])  # every 2nd forward, one layer at the other count
    kind = ("decode", 1, "c")
    assert (kind, 1) in tuner.cost and (kind, 2) in tuner.cost and all(v > 0 for v in tuner.cost.values())


def _gqa3_model():
    """3 K/V heads over 2 threads (an uneven split), head size 32 (the AVX2 attention path)."""
    cfg = ModelConfig(vocab_size=128, hidden_size=192, num_hidden_layers=3, num_attention_heads=6,
                      num_key_value_heads=3, intermediate_size=96, max_position_embeddings=256,
                      initializer_range=0.3, tie_word_embeddings=True)
    return block_model(cfg, lambda n: "Q4_1" if "mlp" in n else "Q8_0", 1, lambda name, p: p.uniform_(0.5, 1.5))


def _steps_at(model, threads: int, team: bool, monkeypatch, n_prompt=30, n_steps=8):
    from llmlab.device import num_threads
    from llmlab.infer.threads import ThreadTuner
    monkeypatch.setenv("LLMLAB_C_LAYERS", "1")
    monkeypatch.setenv("LLMLAB_C_TEAM", "1" if team else "0")
    teams = []
    run = c_layer.Layers.run

    def spy(self, *a):
        out = run(self, *a)
        teams.append(self.last_team)
        return out
    monkeypatch.setattr(c_layer.Layers, "run", spy)
    with num_threads(threads):
        dec = ContiguousDecoder(model, 64)
        dec.tuner = ThreadTuner(threads)
        dec.tuner.cands = [threads]
        out = [dec.forward(list(range(3, 3 + n_prompt)))]
        for t in range(7, 7 + n_steps):
            out.append(dec.forward([t]))
            assert dec.last_argmax == int(out[-1].argmax())  # the head's argmax, in the same C call
    monkeypatch.setattr(c_layer.Layers, "run", run)
    return torch.stack(out), teams


@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("int8", ["0", "1"])
@pytest.mark.parametrize("kind", ["gqa2_bias", "gqa3"])
def test_team_mode_is_bit_equal_to_one_region_per_product(isa, int8, kind, monkeypatch):
    """Batch 1 on 2 threads with every layer in one parallel region (layers_team: rows, K/V heads and
    SiLU columns shared out, each thread its own residual copy) gives the very bits of the
    one-region-per-product path at 1 thread, on every build, with int8 activations or exact, with
    biases, an uneven K/V-head split and Flash-Decoding's split attention."""
    from llmlab.kernels import attention as c_attention
    if int8 == "1" and not ggml.int8_simd():
        pytest.skip("no SIMD int8 dot products here")
    monkeypatch.setenv("LLMLAB_INT8_ACTIVATIONS", int8)
    monkeypatch.setattr(kernel, "_LIB", [kernel.open_lib(isa)])
    monkeypatch.setattr(kernel, "_LIB_I8", [kernel.open_i8(isa)])
    monkeypatch.setattr(c_layer, "_LIB", [c_layer._open_library(isa)])
    monkeypatch.setattr(c_attention, "SPLIT", 16)  # contexts past 16 keys take the split attention
    model = _model(bias=True) if kind == "gqa2_bias" else _gqa3_model()
    ref, teams_ref = _steps_at(model, 1, False, monkeypatch)
    got, teams = _steps_at(model, 2, True, monkeypatch)
    assert teams and all(teams) and not any(teams_ref)  # team mode really ran (and only there)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("qsplit", ["0", "1"])
def test_team_mode_layer_on_fewer_threads(qsplit, monkeypatch):
    """A layer the tuner runs on 1 of the team's 2 threads (its exploring layer) keeps the bits, with
    the attention shared out by query heads (LLMLAB_C_QSPLIT=1, 6 heads: 3 and 3, one K/V head read by
    both threads) or by K/V heads (0: 2 and 1)."""
    monkeypatch.setenv("LLMLAB_C_QSPLIT", qsplit)
    model = _gqa3_model()
    ref, _ = _steps_at(model, 1, False, monkeypatch)
    lnt = []
    run = c_layer.Layers.run
    monkeypatch.setattr(c_layer.Layers, "run", lambda self, x, rope, k, v, sp, sh, w, s, o, threads, *a: run(
        self, x, rope, k, v, sp, sh, w, s, o, lnt.append([2, 1, 2]) or [2, 1, 2], *a))
    got, teams = _steps_at(model, 2, True, monkeypatch)
    assert lnt and all(teams)
    assert torch.equal(got, ref)


def test_kernel_cache_key_covers_included_headers(tmp_path, monkeypatch):
    """A kernel library is rebuilt when a header it includes changes (exp_poly.h), not only its .c."""
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "k.h").write_text("static inline int k(void) { return 1; }\n")
    src = tmp_path / "k.c"
    src.write_text('#include "k.h"\nint f(void) { return k(); }\n')
    first = kernel.build(src, "portable")
    (tmp_path / "k.h").write_text("static inline int k(void) { return 2; }\n")
    second = kernel.build(src, "portable")
    assert first != second and first.is_file() and second.is_file()


@pytest.mark.parametrize("isa", [i for i in _isas() if i != "portable"])
@pytest.mark.parametrize("threads", [1, 2])
def test_int8_fp16_scales_keep_the_bits(isa, threads, monkeypatch):
    """With int8 activations the layer table points at the blocks' fp16 scales (fmt | F16S, every matrix
    and the head: Q4_0, Q4_1 and Q8_0 here): the steps' logits and argmaxes are those of the fp32 scales,
    in team mode (2 threads) and one-region-per-product (1 thread)."""
    if not ggml.int8_simd():
        pytest.skip("no SIMD int8 dot products here")
    monkeypatch.setenv("LLMLAB_INT8_ACTIVATIONS", "1")
    monkeypatch.setattr(kernel, "_LIB", [kernel.open_lib(isa)])
    monkeypatch.setattr(kernel, "_LIB_I8", [kernel.open_i8(isa)])
    monkeypatch.setattr(c_layer, "_LIB", [c_layer._open_library(isa)])
    model = _model(bias=True)
    out = {}
    for f16 in ("0", "1"):
        monkeypatch.setenv("LLMLAB_I8_F16_SCALES", f16)
        out[f16], teams = _steps_at(model, threads, True, monkeypatch)
        assert all(teams) == (threads > 1)
    assert torch.equal(out["0"], out["1"])
    table, head = c_layer.Layers.of(fused(model)).tables(True, True)
    assert bool((table[:, [0, 6, 12, 18]] & ggml.F16S).all()) and int(head[0]) & ggml.F16S  # really in use


@pytest.mark.parametrize("int8", ["0", "1"])
def test_generate_ids_greedy_takes_the_c_heads_argmax(int8, monkeypatch):
    """Greedy `generate_ids` takes each step's token from the C head's argmax (no torch argmax over the
    logits): the tokens of a plain decode loop with torch's argmax on the same steps' logits; with a
    penalty (the logits are rescored) it falls back to sampling's argmax."""
    from llmlab.infer import generate as gen_mod
    from llmlab.infer.generate import generate_ids
    if int8 == "1" and not ggml.int8_simd():
        pytest.skip("no SIMD int8 dot products here")
    monkeypatch.setenv("LLMLAB_INT8_ACTIVATIONS", int8)
    monkeypatch.setenv("LLMLAB_C_LAYERS", "1")
    model = _gqa3_model()
    prompt = list(range(3, 20))
    dec = ContiguousDecoder(model, 64)
    logits, ref = dec.forward(prompt), []
    for _ in range(12):
        ref.append(int(logits.argmax()))
        logits = dec.forward([ref[-1]])
    assert dec.last_argmax is not None  # the head ran in C
    calls = []
    sample_next = gen_mod.sample_next
    monkeypatch.setattr(gen_mod, "sample_next", lambda *a: calls.append(1) or sample_next(*a))
    got = list(generate_ids(model, prompt, SamplingParams(temperature=0.0, max_new_tokens=12)))
    assert got == ref
    assert len(calls) == 1  # only the prompt's step (its forward is Python's: no C argmax)
    pen = list(generate_ids(model, prompt, SamplingParams(temperature=0.0, max_new_tokens=4, repetition_penalty=1.3)))
    assert len(pen) == 4 and len(calls) == 1 + 4


@pytest.mark.parametrize("split", [512, 16])
def test_team_attention_one_sequence_entry_keeps_the_bits(split, monkeypatch):
    """Team mode's attention through `llmlab_decode_attention_one` (LLMLAB_C_ATTN_ONE=1: no work lists or
    region a call) gives the bits of `llmlab_decode_attention` (=0), short contexts (`whole`) and contexts
    past Flash-Decoding's split (its chunks); 3 K/V heads, query heads shared 3 and 3 over 2 threads."""
    from llmlab.kernels import attention as c_attention
    monkeypatch.setattr(c_attention, "SPLIT", split)
    model = _gqa3_model()
    out = {}
    for one in ("0", "1"):
        monkeypatch.setenv("LLMLAB_C_ATTN_ONE", one)
        out[one], teams = _steps_at(model, 2, True, monkeypatch)
        assert all(teams)
        assert bool(c_layer.Layers.of(fused(model)).fns(False)[3]) == (one == "1")  # the entry really in use
    ref, _ = _steps_at(model, 1, False, monkeypatch)
    assert torch.equal(out["1"], out["0"]) and torch.equal(out["1"], ref)


@pytest.mark.parametrize("isa", _isas())
def test_vector_silu_is_the_scalar_silu(isa):
    """layer.c's 8-lane SiLU*up (`silu_vec`, LLMLAB_C_SILU_VEC) gives the scalar fast loop's bits: a dense
    grid over [-100, 100] (past both clamps), random values, +-0, +-inf, NaN, the range's edges, lengths
    that are not multiples of 8; on a build without AVX2 it is the scalar loop."""
    lib = c_layer._open_library(isa)
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.linspace(-100, 100, 400_003), torch.randn(100_000, generator=g) * 6,
                   torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 87.0, 87.00001, -88.0,
                                 -88.0001, 1e-30, -1e-45])])
    u = torch.randn(x.numel(), generator=g)
    ref, got = torch.empty_like(x), torch.empty_like(x)
    lib.llmlab_silu_check(x.data_ptr(), u.data_ptr(), ref.data_ptr(), x.numel(), 1)
    for n in (x.numel(), 13):
        lib.llmlab_silu_check(x.data_ptr(), u.data_ptr(), got.data_ptr(), n, 3)
        assert torch.equal(got[:n].view(torch.int32), ref[:n].view(torch.int32))
    close = torch.isfinite(ref) & (x.abs() < 80)
    assert torch.allclose(ref[close], (torch.nn.functional.silu(x) * u)[close], rtol=1e-5, atol=1e-6)


def test_team_and_one_thread_steps_keep_the_bits_with_vector_silu(monkeypatch):
    """Decode steps with SiLU on 8 lanes (LLMLAB_C_SILU_VEC=1) give the bits of the scalar loop (=0), in
    team mode (2 threads) and at 1 thread."""
    model = _gqa3_model()
    out = {}
    for vec in ("0", "1"):
        monkeypatch.setenv("LLMLAB_C_SILU_VEC", vec)
        for threads in (1, 2):
            out[vec, threads], teams = _steps_at(model, threads, True, monkeypatch)
            assert all(teams) == (threads > 1)
    assert torch.equal(out["1", 1], out["0", 1]) and torch.equal(out["1", 2], out["0", 2])
    assert torch.equal(out["1", 2], out["1", 1])
