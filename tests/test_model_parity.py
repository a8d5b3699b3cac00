"""Our SmolLM2 against transformers' LlamaForCausalLM on the same GGUF weights (dequantized by
transformers itself, independently of our loader)."""
from __future__ import annotations

import pytest
import torch

from llmlab.infer.generate import generate_ids
from llmlab.infer.sampling import SamplingParams
from llmlab.model.kv_cache import KVCache

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "In 1905, Albert Einstein published four papers that",
    "Photosynthesis converts light energy into",
    "人工智能是计算机科学的一个分支，",
    "北京是中华人民共和国的首都，",
    "<|im_start|>user\nWhat is 12 * 7?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village by the sea, there lived",
    "The quick brown fox jumps over the lazy dog. 1234567890 😀 ✓",
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_transformers(prompt, smollm2, hf_smollm2, smollm2_tokenizer):
    ids = torch.tensor([smollm2_tokenizer.encode(prompt)])
    with torch.inference_mode():
        ours = smollm2(ids)
        ref = hf_smollm2(ids).logits
    assert ours.shape == ref.shape
    # fp32 both sides, summed in another order: every prompt <= 1e-4 on the AVX2 EPYC; on the
    # AVX-512 Xeon (2 threads) 2.1e-5..6.5e-5, and 1.459e-4 for the Beijing prompt (max |logit| 32.7)
    assert (ours - ref).abs().max().item() <= 2e-4


def test_greedy_32_tokens_identical(smollm2, hf_smollm2, smollm2_tokenizer):
    eos = smollm2_tokenizer.eos_id
    for prompt in (PROMPTS[0], PROMPTS[6]):
        ids = smollm2_tokenizer.encode(prompt)
        ours = list(generate_ids(smollm2, ids, SamplingParams(max_new_tokens=32)))
        if eos in ours:  # transformers stops after EOS; we were not told to
            ours = ours[:ours.index(eos) + 1]
        x = torch.tensor([ids])
        with torch.inference_mode():
            ref = hf_smollm2.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=32,
                                      do_sample=False, pad_token_id=2)[0, len(ids):].tolist()
        assert ours == ref


def test_kv_cache_equals_full_recompute(smollm2, smollm2_tokenizer):
    ids = smollm2_tokenizer.encode(PROMPTS[2] + " " + PROMPTS[5])
    x = torch.tensor([ids])
    with torch.inference_mode():
        full = smollm2(x)
        cache = KVCache.for_model(smollm2, 1, len(ids))
        pieces = [smollm2(x[:, :5], cache=cache)]  # a prefill chunk...
        pieces.append(smollm2(x[:, 5:9], cache=cache))  # ...a chunk appended to the cache...
        for t in range(9, len(ids)):  # ...then one token at a time
            pieces.append(smollm2(x[:, t:t + 1], cache=cache))
    inc = torch.cat(pieces, dim=1)
    # fp32 sums in another order (chunked vs whole) over 30 layers: up to 1.2e-4 seen on an
    # AVX-512 CPU (1 logit of 1.9M), <= 1e-4 on AVX2 ones
    torch.testing.assert_close(inc, full, atol=2e-4, rtol=1e-5)


def test_save_then_transformers_load(tmp_path, smollm2, smollm2_tokenizer):
    from transformers import AutoModelForCausalLM

    from llmlab.model.hf import load_hf_dir, save_hf_dir

    save_hf_dir(smollm2, tmp_path / "m")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    ours_back = load_hf_dir(tmp_path / "m")
    ids = torch.tensor([smollm2_tokenizer.encode(PROMPTS[3])])
    with torch.inference_mode():
        a, b, c = smollm2(ids), hf(ids).logits, ours_back(ids)
    assert (a - b).abs().max().item() <= 1e-4
    assert torch.equal(a, c)


def test_load_any_llama_dir(tmp_path):
    """A random HF LLaMA (untied, MHA, different rope base) saved by transformers loads into ours."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmlab.model.load import load_model

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      rope_theta=500.0, tie_word_embeddings=False)
    hf = LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path / "llama", safe_serialization=True)
    ours, _ = load_model(str(tmp_path / "llama"))
    ids = torch.randint(0, 300, (2, 40))
    with torch.inference_mode():
        assert (ours(ids) - hf(ids).logits).abs().max().item() <= 1e-5
