"""Continuous batching: batch-invariant greedy outputs, preemption, cancellation, forks, prefix cache."""
from __future__ import annotations

import pytest
import torch

from llmlab.infer.engine import Engine
from llmlab.infer.generate import generate_ids
from llmlab.infer.sampling import SamplingParams
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer


def _prompts(n, seed=0, vocab=97):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (int(torch.randint(3, 60, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def test_16_concurrent_greedy_requests_equal_each_alone_smollm2(smollm2, smollm2_tokenizer):
    """The issue's test: mixed-length prompts, run together vs one at a time, bit-identical ids."""
    tok = smollm2_tokenizer
    texts = [f"Question {i}: " + "why blue? " * (i % 8) + "Answer:" for i in range(16)]
    prompts = [tok.encode(t) for t in texts]
    assert len({len(p) for p in prompts}) >= 6
    params = [SamplingParams(max_new_tokens=3 + i % 4, ignore_eos=True) for i in range(16)]
    eng = Engine(smollm2, tok, num_blocks=256, max_num_seqs=16, prefill_chunk=64, max_prefill_tokens=128)
    together = eng.generate(prompts, params)
    alone = [Engine(smollm2, tok, num_blocks=64, prefill_chunk=64, max_prefill_tokens=128).generate([p], [sp])[0]
             for p, sp in zip(prompts, params)]
    assert together == alone
    # and the engine agrees with the plain single-sequence decoder
    assert alone[3][0] == list(generate_ids(smollm2, prompts[3], params[3]))


@pytest.mark.parametrize("path", ["fp32", "blocks_without_gemm"])
def test_concurrent_equal_alone_on_the_other_matmul_paths(smollm2, smollm2_tokenizer, monkeypatch, path):
    """What other machines run: no block kernel (fp32 weights: packed oneDNN or padded MKL), or
    blocks without the GEMM path (AVX2, portable: prefill then on the decode path, no fp32 copy)."""
    from llmlab.infer import fused as runner
    from llmlab.kernels import ggml
    if path == "blocks_without_gemm":
        monkeypatch.setattr(ggml, "has_gemm", lambda: False)
    runner._FUSED[smollm2] = runner.FusedModel(smollm2, runner.FusedModel.signature(smollm2),
                                               blocks=path != "fp32")
    try:
        tok = smollm2_tokenizer
        prompts = [tok.encode(f"Item {i}: " + "red and green " * (i % 5) + "so") for i in range(8)]
        params = [SamplingParams(max_new_tokens=3 + i % 3, ignore_eos=True) for i in range(8)]
        eng = Engine(smollm2, tok, num_blocks=128, max_num_seqs=8, prefill_chunk=64, max_prefill_tokens=128)
        assert (type(eng.runner.w.layers[0].up_w) is runner.QLinear) == (path != "fp32")
        together = eng.generate(prompts, params)
        alone = [Engine(smollm2, tok, num_blocks=32, prefill_chunk=64, max_prefill_tokens=128).generate([p], [sp])[0]
                 for p, sp in zip(prompts, params)]
        assert together == alone
    finally:
        runner._FUSED.pop(smollm2)


def test_requests_join_at_token_boundaries(tiny):
    eng = Engine(tiny, None, num_blocks=64, max_num_seqs=8)
    p = _prompts(3)
    a = eng.add_request(p[0], SamplingParams(max_new_tokens=12, ignore_eos=True))
    for _ in range(3):
        eng.step()
    b = eng.add_request(p[1], SamplingParams(max_new_tokens=5, ignore_eos=True))
    out = eng.step()  # b is prefilled and a decodes in the same step
    assert {o.request_id for o in out} == {a, b}
    solo = Engine(tiny, None, num_blocks=64).generate([p[1]], SamplingParams(max_new_tokens=5, ignore_eos=True))
    got = [o.token_id for o in out if o.request_id == b]
    while eng.has_work():
        got += [o.token_id for o in eng.step() if o.request_id == b]
    assert got == solo[0][0]


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_preemption_when_blocks_run_out(tiny, mode):
    prompts = _prompts(6, seed=1)
    params = SamplingParams(max_new_tokens=40, ignore_eos=True)
    ref = Engine(tiny, None, num_blocks=200).generate(prompts, params)
    small = Engine(tiny, None, num_blocks=20, block_size=16, preempt=mode, prefix_caching=False)
    got = small.generate(prompts, params)
    assert small.stats["preempted"] > 0
    assert got == ref
    assert small.num_free_blocks == 20


def test_chunked_prefill_gives_same_tokens(tiny):
    prompts = _prompts(4, seed=2)
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    whole = Engine(tiny, None, num_blocks=64, prefill_chunk=256, max_prefill_tokens=256).generate(prompts, params)
    eng = Engine(tiny, None, num_blocks=64, prefill_chunk=16, max_prefill_tokens=32)
    assert eng.generate(prompts, params) == whole
    assert eng.stats["steps"] > 6


def test_cancel_frees_blocks(tiny):
    eng = Engine(tiny, None, num_blocks=32)
    rid = eng.add_request(_prompts(1)[0], SamplingParams(max_new_tokens=100, ignore_eos=True))
    eng.step()
    eng.step()
    assert eng.num_free_blocks < 32
    assert eng.cancel(rid)
    assert eng.num_free_blocks == 32 and not eng.has_work()
    assert not eng.cancel(rid)


def test_parallel_samples_share_prompt_blocks(tiny):
    eng = Engine(tiny, None, num_blocks=64, prefix_caching=False)
    prompt = _prompts(1, seed=3)[0] * 2  # > 16 tokens: at least one full shared block
    rid = eng.add_request(prompt, SamplingParams(max_new_tokens=5, temperature=1.0, n=4, seed=7, ignore_eos=True))
    eng.step()
    seqs = [s for s in eng.running]
    assert len(seqs) == 4
    assert len({s.table.blocks[0] for s in seqs}) == 1  # the first block is shared by all 4
    assert eng.cache.alloc.ref[seqs[0].table.blocks[0]] == 4
    outs = {}
    while eng.has_work():
        for o in eng.step():
            outs.setdefault(o.index, []).append(o.token_id)
    assert rid not in eng.requests and eng.num_free_blocks == 64
    assert len({tuple(v) for v in outs.values()}) > 1  # different seeds -> different samples


def test_prefix_cache_hits_and_outputs_are_sane(tiny):
    base = _prompts(1, seed=4)[0] * 3
    eng = Engine(tiny, None, num_blocks=64)
    p = SamplingParams(max_new_tokens=4, ignore_eos=True)
    first = eng.generate([base + [1, 2]], p)
    second = eng.generate([base + [1, 2]], p)
    assert eng.stats["prefix_hit_tokens"] >= 16
    assert first == second


def test_seeded_sampling_is_batch_independent(tiny):
    prompts = _prompts(5, seed=5)
    sp = [SamplingParams(max_new_tokens=8, temperature=0.9, top_k=20, seed=i, ignore_eos=True) for i in range(5)]
    together = Engine(tiny, None, num_blocks=64).generate(prompts, sp)
    alone = [Engine(tiny, None, num_blocks=64).generate([p], [s])[0] for p, s in zip(prompts, sp)]
    assert together == alone


def test_stop_strings_tokens_and_logprobs(smollm2, smollm2_tokenizer):
    tok = smollm2_tokenizer
    ids = tok.encode("1, 2, 3, 4, 5, 6,")
    eng = Engine(smollm2, tok, num_blocks=32)
    rid = eng.add_request(ids, SamplingParams(max_new_tokens=20, stop=(" 9",), logprobs=2))
    outs = []
    while eng.has_work():
        outs += eng.step()
    text = "".join(o.text for o in outs)
    assert text == " 7, 8," and outs[-1].finish_reason == "stop"
    assert all(o.logprob <= 0 and len(o.top_logprobs) == 2 for o in outs)
    seven = tok.encode(" 7")[0]
    eng.add_request(ids, SamplingParams(max_new_tokens=20, stop_token_ids=(seven,)))
    outs = []
    while eng.has_work():
        outs += eng.step()
    assert outs[-1].finish_reason == "stop" and outs[-1].token_id is None and outs[-1].stop_token_id == seven
    assert rid not in eng.requests


def test_prompt_too_long_and_max_tokens(tiny):
    eng = Engine(tiny, None, num_blocks=64)
    with pytest.raises(ValueError, match="context window"):
        eng.add_request(list(range(90)) * 3, SamplingParams())
    out = eng.generate([[1, 2, 3]], SamplingParams(max_new_tokens=3, ignore_eos=True))
    assert len(out[0][0]) == 3


def test_a_zoo_variant_decodes_through_the_engine_and_the_one_loop_alike():
    """An ALiBi model (model zoo): the engine (its Transformer.forward runner over the paged cache)
    and the one decoding loop (generate_batch) both give the greedy tokens of a full recompute."""
    from llmlab.infer.generate import generate_batch

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      max_position_embeddings=64, position="alibi")
    model = Transformer(cfg).eval()
    prompt = [5, 9, 11, 3]
    params = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)
    out = generate_batch(model, [prompt], params)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert out.completion_ids[0].tolist() == ids[-6:]
    eng = Engine(model, None, num_blocks=8)
    assert list(eng.generate([prompt], params)[0][0]) == ids[-6:]
