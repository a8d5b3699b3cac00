"""Every architecture with a `transformers` class: a random HF model -> our loader -> same logits,
and our export -> `from_pretrained` -> same logits (fp32, max abs diff <= 1e-4)."""
from __future__ import annotations

import pytest
import torch

from llmlab.model.hf import load_hf_dir, save_hf_dir

transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=64)


def _llama(**kw):
    return transformers.LlamaConfig(**{**SMALL, "num_key_value_heads": 2, "tie_word_embeddings": False, **kw})


CASES = {
    "llama": lambda: _llama(),
    "llama-rope-linear": lambda: _llama(rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "llama-rope-dynamic": lambda: _llama(max_position_embeddings=16, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
    "llama-rope-yarn": lambda: _llama(rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                    "original_max_position_embeddings": 8}),
    "llama-rope-llama3": lambda: _llama(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8}),
    "mistral-window": lambda: transformers.MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=4),
    "mixtral": lambda: transformers.MixtralConfig(**SMALL, num_key_value_heads=2, num_local_experts=4,
                                                  num_experts_per_tok=2),
    "qwen2": lambda: transformers.Qwen2Config(**SMALL, num_key_value_heads=2),
    "gemma": lambda: transformers.GemmaConfig(**SMALL, num_key_value_heads=1, head_dim=16),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64),
    "bloom": lambda: transformers.BloomConfig(vocab_size=97, hidden_size=32, n_layer=2, n_head=4),
    "phi": lambda: transformers.PhiConfig(**SMALL, partial_rotary_factor=0.5),
    "phi-qk-layernorm": lambda: transformers.PhiConfig(**SMALL, qk_layernorm=True),
}


def _hf_model(config):
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    m = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # random values everywhere (norm gains and biases too), not HF's init
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers_both_ways(case, tmp_path):
    hf = _hf_model(CASES[case]())
    T = 24 if case == "llama-rope-dynamic" else 12  # dynamic NTK acts beyond the trained context (16)
    ids = torch.randint(0, 97, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
    hf.save_pretrained(tmp_path / "hf")
    ours = load_hf_dir(tmp_path / "hf")
    with torch.no_grad():
        got = ours(ids)
    assert (got - ref).abs().max().item() <= 1e-4
    # export back: the family's own config and weight names, loadable by transformers
    save_hf_dir(ours, tmp_path / "ours")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()
    assert type(back) is type(hf)
    with torch.no_grad():
        assert (back(ids).logits - ref).abs().max().item() <= 1e-4


def test_rope_scalings_change_the_logits(tmp_path):
    """The scaled cases above are not trivially equal to plain RoPE."""
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(1))
    outs = []
    for case in ("llama", "llama-rope-linear", "llama-rope-yarn", "llama-rope-llama3"):
        save_dir = tmp_path / case
        _hf_model(CASES[case]()).save_pretrained(save_dir)
        with torch.no_grad():
            outs.append(load_hf_dir(save_dir)(ids))
    for o in outs[1:]:
        assert (o - outs[0]).abs().max() > 1e-3


def test_mixtral_original_layout_loads(tmp_path):
    """Hub Mixtral files keep block_sparse_moe.experts.E.w1/w2/w3: the same model."""
    from llmlab.checkpoint import save_tensors, write_json
    hf = _hf_model(CASES["mixtral"]())
    hf.save_pretrained(tmp_path / "a")
    ours = load_hf_dir(tmp_path / "a")
    legacy = {}
    for k, v in ours.state_dict().items():
        if ".mlp.experts.gate_up_proj" in k:
            p = k.replace("mlp.experts.gate_up_proj", "block_sparse_moe.experts.")
            for e in range(v.shape[0]):
                g, u = v[e].chunk(2)
                legacy[f"{p}{e}.w1.weight"], legacy[f"{p}{e}.w3.weight"] = g.clone(), u.clone()
        elif ".mlp.experts.down_proj" in k:
            p = k.replace("mlp.experts.down_proj", "block_sparse_moe.experts.")
            for e in range(v.shape[0]):
                legacy[f"{p}{e}.w2.weight"] = v[e].clone()
        elif ".mlp.gate." in k:
            legacy[k.replace(".mlp.gate.", ".block_sparse_moe.gate.")] = v
        else:
            legacy[k] = v
    (tmp_path / "b").mkdir()
    save_tensors(tmp_path / "b" / "model.safetensors", legacy)
    import json
    write_json(tmp_path / "b" / "config.json", json.loads((tmp_path / "a" / "config.json").read_text()))
    ids = torch.randint(0, 97, (1, 9))
    with torch.no_grad():
        assert torch.equal(load_hf_dir(tmp_path / "b")(ids), ours(ids))


@pytest.mark.parametrize("case", ["gpt2", "bloom"])
def test_hub_files_without_transformer_prefix_load(case, tmp_path):
    """openai-community/gpt2 and bigscience/bloom-560m store `h.0...`, `wte.weight` (no `transformer.`),
    and GPT-2 files carry the causal-mask buffers `attn.bias`: both are accepted."""
    from llmlab.checkpoint import load_tensors, save_tensors
    hf = _hf_model(CASES[case]())
    hf.save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    state = {k.removeprefix("transformer."): v for k, v in load_tensors(f).items() if k != "lm_head.weight"}
    if case == "gpt2":
        state["h.0.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
    save_tensors(f, state)
    ids = torch.randint(0, 97, (1, 10))
    with torch.no_grad():
        assert (load_hf_dir(tmp_path)(ids) - hf(ids).logits).abs().max() <= 1e-4
