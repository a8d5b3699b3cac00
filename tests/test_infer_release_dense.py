"""Serving from the blocks alone (`ggml.release_dense`): the fp32 copies of block-quantized
matrices are dropped, outputs stay bit-identical, and the weights come back exactly when a dense
forward or a state_dict needs them."""
from __future__ import annotations

import pytest
import torch

from llmlab.infer.engine import Engine
from llmlab.infer.sampling import SamplingParams
from llmlab.kernels import ggml
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from tiny_quant import block_model

pytestmark = pytest.mark.skipif(not ggml.available(), reason="the block kernel does not build here")


def _quantized_model(fmt_of=lambda name: "Q4_0" if "mlp" in name else "Q8_0"):
    """A small LLaMA whose 2-D weights are GGUF blocks, loaded the way `load_gguf` loads one."""
    cfg = ModelConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                      initializer_range=0.3, tie_word_embeddings=True)
    return block_model(cfg, fmt_of)


def _run(model, prompts):
    greedy = SamplingParams(max_new_tokens=6, ignore_eos=True)
    sampled = SamplingParams(max_new_tokens=6, ignore_eos=True, temperature=0.9, top_p=0.9, seed=3)
    return [Engine(model, None, num_blocks=64, max_num_seqs=4).generate(prompts, sp) for sp in (greedy, sampled)]


def test_release_keeps_outputs_and_restores_exactly():
    model = _quantized_model()
    prompts = [[1, 5, 9, 77, 3], [4] * 40, [100, 2]]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    with torch.no_grad():
        ref_logits = model(ids)[0]
    before = _run(model, prompts)

    freed = ggml.release_dense(model)
    layer_mats = sum(p.numel() * 4 for n, p in state.items() if p.dim() == 2 and n.startswith("model.layers."))
    assert freed == layer_mats  # every layer matrix; the tied embedding / LM head stays
    assert model.model.layers[0].mlp.down_proj.weight.is_meta
    assert not model.model.embed_tokens.weight.is_meta
    assert _run(model, prompts) == before  # the engine ran on the blocks alone
    assert model.model.layers[0].self_attn.q_proj.weight.is_meta  # ... without restoring anything

    with torch.no_grad():
        got = model(ids)[0]  # a dense forward brings the fp32 weights back first
    assert not model.model.layers[0].mlp.down_proj.weight.is_meta
    assert torch.equal(got, ref_logits)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert _run(model, prompts) == before  # blocks still used after the restore (stamps updated)


def test_state_dict_restores_and_mixed_formats_fall_back():
    # q/k/v in different formats cannot be one block matmul: the fused q/k/v is the blocks' decode
    model = _quantized_model(lambda n: "Q4_1" if "k_proj" in n else "Q8_0")
    prompts = [[7, 8, 9, 10]]
    before = _run(model, prompts)
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    assert ggml.release_dense(model) > 0
    assert _run(model, prompts) == before
    sd = model.state_dict()
    assert all(torch.equal(sd[k], ref[k]) for k in ref)
    assert ggml.restore_dense(model) == 0  # already back


def test_no_blocks_releases_nothing():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    max_position_embeddings=64)).eval()
    assert ggml.release_dense(model) == 0
    assert not any(p.is_meta for p in model.parameters())


@pytest.mark.slow
def test_smollm2_served_from_blocks_alone_is_identical(smollm2_path, smollm2_tokenizer):
    """SmolLM2 (Q4_1 layers, tied Q8_0 embedding): 425 MB released, greedy and sampled outputs equal."""
    from llmlab.model.gguf_io import load_gguf
    model, tok = load_gguf(smollm2_path), smollm2_tokenizer
    prompts = [tok.encode("The capital of France is"), tok.encode("def fib(n):")]
    before = _run(model, prompts)
    assert ggml.release_dense(model) > 400 * 2 ** 20
    assert _run(model, prompts) == before
