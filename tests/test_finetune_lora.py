"""LoRA: identity at init, merge == adapter output, unmerge restores the base, strict save/load,
and PEFT-format interop with the `peft` library in both directions."""
from __future__ import annotations

import copy

import pytest
import torch

from llmlab.errors import UserError
from llmlab.finetune.lora import (LoraConfig, apply_lora, lora_layers, lora_state_dict, merge_and_unload,
                                  merge_lora, unmerge_lora)
from llmlab.finetune.peft_format import load_lora, save_lora
from llmlab.finetune.targets import count_trainable, find_targets
from llmlab.model.transformer import Transformer


def _tiny(tiny_config, seed=0):
    torch.manual_seed(seed)
    return Transformer(tiny_config).eval()


def _randomize_B(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_layers(model).values():
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.05)


IDS = torch.tensor([[3, 14, 15, 92, 65, 35, 8, 9, 7, 9]])


def test_identity_at_init_and_only_lora_trains(tiny_config):
    model = _tiny(tiny_config)
    base = model(IDS)
    names = apply_lora(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    assert names == [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    assert torch.equal(model(IDS), base)  # B = 0 exactly
    trainable, _ = count_trainable(model)
    d, kv = tiny_config.hidden_size, tiny_config.num_key_value_heads * tiny_config.head_dim
    assert trainable == 2 * (4 * (d + d) + 4 * (d + kv))  # r (d_in + d_out) per adapted matrix
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())
    a = lora_layers(model)[names[0]].lora_A.weight
    assert abs(a.std().item() - 1 / 4) < 0.08  # gaussian N(0, 1/r)


def test_forward_matches_formula(tiny_config):
    model = _tiny(tiny_config)
    q = copy.deepcopy(model.model.layers[0].self_attn.q_proj)
    apply_lora(model, LoraConfig(r=2, lora_alpha=6, target_modules="model\\.layers\\.0\\.self_attn\\.q_proj"))
    _randomize_B(model)
    lq = model.model.layers[0].self_attn.q_proj
    x = torch.randn(3, tiny_config.hidden_size)
    want = x @ q.weight.T + (6 / 2) * (x @ lq.lora_A.weight.T @ lq.lora_B.weight.T)
    torch.testing.assert_close(lq(x), want, atol=1e-6, rtol=1e-5)


def test_merge_equals_adapter_and_unmerge_restores(tiny_config):
    model = _tiny(tiny_config)
    w0 = {n: p.detach().clone() for n, p in model.state_dict().items()}
    apply_lora(model, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                      "gate_proj", "up_proj", "down_proj"]))
    _randomize_B(model)
    adapted = model(IDS)
    assert not torch.allclose(adapted, _tiny(tiny_config)(IDS), atol=1e-3)  # the adapter does something
    merge_lora(model)
    torch.testing.assert_close(model(IDS), adapted, atol=1e-5, rtol=1e-5)
    unmerge_lora(model)
    for n, p in model.state_dict().items():
        if n in w0:
            torch.testing.assert_close(p, w0[n], atol=1e-6, rtol=0)
    merged = merge_and_unload(model)
    assert not lora_layers(merged)
    assert set(merged.state_dict()) == set(w0)
    torch.testing.assert_close(merged(IDS), adapted, atol=1e-5, rtol=1e-5)


def test_bad_targets(tiny_config):
    model = _tiny(tiny_config)
    with pytest.raises(UserError, match="matches no"):
        find_targets(model, ["qproj"])
    with pytest.raises(UserError, match="matches no"):
        apply_lora(model, LoraConfig(target_modules="q_proj"))  # a regex must match the whole name
    with pytest.raises(UserError, match="invalid regular"):
        find_targets(model, "(")
    with pytest.raises(UserError, match="tied"):
        apply_lora(model, LoraConfig(target_modules=["lm_head"]))


def test_save_load_strict(tiny_config, tmp_path):
    model = _tiny(tiny_config)
    cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    apply_lora(model, cfg)
    _randomize_B(model)
    out = model(IDS)
    save_lora(model, tmp_path / "a", cfg)
    from safetensors.torch import load_file
    keys = set(load_file(str(tmp_path / "a" / "adapter_model.safetensors")))
    assert keys == {f"base_model.model.{k}" for k in lora_state_dict(model)}  # only its own weights
    fresh = _tiny(tiny_config)
    load_lora(fresh, tmp_path / "a")
    torch.testing.assert_close(fresh(IDS), out, atol=0, rtol=0)
    # strict: a base with LoRA on other modules refuses the file
    other = _tiny(tiny_config)
    apply_lora(other, LoraConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(UserError, match="unexpected tensors"):
        load_lora(other, tmp_path / "a")
    # a different base model (other weights, same shapes) is refused by the fingerprint
    with pytest.raises(UserError, match="different base model"):
        load_lora(_tiny(tiny_config, seed=5), tmp_path / "a")
    # a different architecture is refused too
    cfg2 = copy.deepcopy(tiny_config)
    cfg2.hidden_size, cfg2.head_dim = 64, 16
    with pytest.raises(UserError, match="different base model"):
        load_lora(Transformer(cfg2), tmp_path / "a")


def _hf_tiny(model, tmp_path):
    transformers = pytest.importorskip("transformers")
    from llmlab.model.hf import save_hf_dir
    save_hf_dir(model, tmp_path / "base")
    return transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"), dtype=torch.float32).eval()


def test_peft_loads_ours_tiny(tiny_config, tmp_path):
    peft = pytest.importorskip("peft")
    model = _tiny(tiny_config)
    hf = _hf_tiny(model, tmp_path)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    apply_lora(model, cfg)
    _randomize_B(model)
    save_lora(model, tmp_path / "ours", cfg)
    pm = peft.PeftModel.from_pretrained(hf, str(tmp_path / "ours")).eval()
    with torch.no_grad():
        torch.testing.assert_close(pm(IDS).logits, model(IDS), atol=1e-5, rtol=1e-5)


def test_ours_loads_peft_tiny(tiny_config, tmp_path):
    peft = pytest.importorskip("peft")
    model = _tiny(tiny_config)
    hf = _hf_tiny(model, tmp_path)
    pc = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["k_proj", "o_proj", "up_proj"], init_lora_weights=False)
    pm = peft.get_peft_model(hf, pc).eval()
    pm.save_pretrained(str(tmp_path / "theirs"))
    load_lora(model, tmp_path / "theirs")
    with torch.no_grad():
        torch.testing.assert_close(model(IDS), pm(IDS).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_peft_interop_smollm2(smollm2, hf_smollm2, smollm2_tokenizer, tmp_path):
    """SmolLM2-135M: our adapter through peft on transformers' Llama, and peft's through ours."""
    peft = pytest.importorskip("peft")
    ids = torch.tensor([smollm2_tokenizer.encode("The capital of France is Paris, and the capital of")])
    ours, hf = copy.deepcopy(smollm2), copy.deepcopy(hf_smollm2)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "up_proj"])
    apply_lora(ours, cfg)
    _randomize_B(ours)
    save_lora(ours, tmp_path / "ours", cfg)
    pm = peft.PeftModel.from_pretrained(hf, str(tmp_path / "ours")).eval()
    with torch.no_grad():
        diff = (pm(ids).logits - ours(ids)).abs().max().item()
        assert diff <= 1e-4, diff
        assert (ours(ids) - smollm2(ids)).abs().max().item() > 1e-2  # the adapter changed something
    hf2 = copy.deepcopy(hf_smollm2)
    pc = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["k_proj", "gate_proj"], init_lora_weights=False)
    pm2 = peft.get_peft_model(hf2, pc).eval()
    pm2.save_pretrained(str(tmp_path / "theirs"))
    ours2 = copy.deepcopy(smollm2)
    load_lora(ours2, tmp_path / "theirs")
    with torch.no_grad():
        assert (ours2(ids) - pm2(ids).logits).abs().max().item() <= 1e-4


def test_merge_cli_and_peft_config_errors(tiny_config, tmp_path):
    from llmlab.checkpoint import read_json, write_json
    from llmlab.finetune.commands import MergeConfig, run_merge
    from llmlab.model.hf import load_hf_dir, save_hf_dir
    model = _tiny(tiny_config)
    save_hf_dir(model, tmp_path / "base")
    cfg = LoraConfig(r=2, target_modules=["v_proj", "up_proj"])
    apply_lora(model, cfg)
    _randomize_B(model)
    save_lora(model, tmp_path / "ad", cfg)
    assert run_merge(MergeConfig(model=str(tmp_path / "base"), adapter=str(tmp_path / "ad"),
                                 output_dir=str(tmp_path / "merged"))) == 0
    torch.testing.assert_close(load_hf_dir(tmp_path / "merged")(IDS), model(IDS), atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError, match="not found"):
        run_merge(MergeConfig(adapter=str(tmp_path / "nope"), output_dir=str(tmp_path / "m2")))
    conf = read_json(tmp_path / "ad" / "adapter_config.json")
    for key, value, msg in [("use_dora", True, "use_dora"), ("peft_type", "IA3", "expected 'LORA'"),
                            ("bias", "all", "bias")]:
        write_json(tmp_path / "ad" / "adapter_config.json", {**conf, key: value})
        with pytest.raises(UserError, match=msg):
            load_lora(_tiny(tiny_config), tmp_path / "ad")


def test_no_double_wrapping(tiny_config):
    from llmlab.finetune.adapter import AdapterConfig, apply_adapters
    model = _tiny(tiny_config)
    apply_lora(model, LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(UserError, match="already adapted"):
        apply_lora(model, LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(UserError, match="already adapted"):
        apply_adapters(model, AdapterConfig(target_modules=["q_proj"]))
    # a broad regex never reaches into the LoRA layers' own lora_A / lora_B
    assert find_targets(model, r".*layers\.0\.self_attn\..*") == [
        f"model.layers.0.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
