"""Model-zoo variants beyond LLaMA/GPT-2 through the engine (per-sequence Transformer.forward over
the paged cache): greedy ids equal the reference decoding loop's, with prefix caching, forks,
chunked prefill and speculation."""
from __future__ import annotations

import pytest
import torch

from llmlab.infer.engine import Engine
from llmlab.infer.generate import generate_batch, generate_ids
from llmlab.infer.model_runner import ModelRunner
from llmlab.infer.sampling import SamplingParams
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer

VARIANTS = {
    "alibi_postnorm": dict(position="alibi", norm_placement="post"),
    "sliding_qknorm": dict(sliding_window=8, qk_norm=True),
    "moe_softcap": dict(num_local_experts=4, num_experts_per_tok=2, final_logit_softcapping=30.0),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_greedy_through_the_engine_equals_the_reference_loop(name):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.3, **VARIANTS[name])
    assert cfg.beyond_llama_gpt()
    model = Transformer(cfg).eval()
    g = torch.Generator().manual_seed(1)
    shared = torch.randint(0, 97, (40,), generator=g).tolist()
    prompts = [shared + torch.randint(0, 97, (n,), generator=g).tolist() for n in (3, 11, 25)]
    p = SamplingParams(max_new_tokens=10, ignore_eos=True)
    ref = [generate_batch(model, [q], p, masked=False).completions()[0] for q in prompts]
    assert list(generate_ids(model, prompts[0], p)) == ref[0]  # `llmlab generate`'s batch-1 path
    eng = Engine(model, None, num_blocks=64, prefill_chunk=16, max_prefill_tokens=32)
    assert isinstance(eng.runner, ModelRunner)
    assert [o[0] for o in eng.generate(prompts, p)] == ref
    assert eng.generate(prompts[:1], p)[0][0] == ref[0] and eng.stats["prefix_hit_tokens"] > 0
    spec = Engine(model, None, num_blocks=64, speculative="ngram", speculative_fallback=False)
    assert [o[0] for o in spec.generate(prompts, p)] == ref
    two = eng.generate(prompts[1:2], SamplingParams(max_new_tokens=6, n=2, temperature=0.9, seed=4, ignore_eos=True))
    assert len(two[0]) == 2 and all(len(x) == 6 for x in two[0])
    assert all(r == 0 for r in eng.cache.alloc.ref)


def test_the_server_serves_a_variant(smollm2_tokenizer):
    openai = pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    from llmlab.serve.live import live_server
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=smollm2_tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      position="alibi", norm_placement="post")
    with live_server(Transformer(cfg).eval(), smollm2_tokenizer, num_blocks=32) as (base, _):
        c = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
        r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                      temperature=0)
        assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens >= 1
