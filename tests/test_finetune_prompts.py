"""Bottleneck adapters, prompt tuning, P-tuning v1/v2 and prefix tuning on a tiny model.

The reference for soft prompts and prefixes is the base model itself: a prompt initialised from
the embeddings of real tokens X must give exactly the logits of the base run on [X; ids], and a
prefix initialised from the keys/values the base computes for X must do the same."""
from __future__ import annotations

import pytest
import torch

from llmlab.errors import UserError
from llmlab.finetune.adapter import AdapterConfig, adapter_state_dict, apply_adapters, load_adapters, save_adapters
from llmlab.finetune.prefix import PrefixCache, PrefixConfig, PrefixModel
from llmlab.finetune.prompt import PromptConfig, SoftPromptModel
from llmlab.finetune.targets import count_trainable
from llmlab.model.kv_cache import KVCache
from llmlab.model.transformer import Transformer

IDS = torch.tensor([[5, 17, 33, 2, 61, 40, 8, 90], [1, 2, 3, 4, 5, 6, 7, 8]])
X = [11, 22, 44]


def _tiny(cfg, seed=0):
    torch.manual_seed(seed)
    return Transformer(cfg).eval()


def _train(model, steps=6, lr=5e-2):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    labels = IDS.roll(-1, 1)
    losses = []
    for _ in range(steps):
        loss = model.loss(IDS, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ---- bottleneck adapters ---------------------------------------------------------------------

def test_adapter_identity_count_train_save(tiny_config, tmp_path):
    model = _tiny(tiny_config)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    base_out = model(IDS)
    names = apply_adapters(model, AdapterConfig(r=4))
    assert len(names) == 2 * tiny_config.num_hidden_layers
    assert torch.equal(model(IDS), base_out)  # zero-init up-projection: exactly the identity
    d = tiny_config.hidden_size
    assert count_trainable(model)[0] == len(names) * (2 * d * 4 + 4 + d)
    losses = _train(model)
    assert losses[-1] < losses[0]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in base_state.items())  # base untouched
    out = model(IDS)
    save_adapters(model, tmp_path / "ad", AdapterConfig(r=4))
    fresh = _tiny(tiny_config)
    load_adapters(fresh, tmp_path / "ad")
    assert set(adapter_state_dict(fresh)) == set(adapter_state_dict(model))
    torch.testing.assert_close(fresh(IDS), out, atol=0, rtol=0)
    with pytest.raises(UserError, match="matches no"):
        apply_adapters(_tiny(tiny_config), AdapterConfig(target_modules=["ffn_out"]))


# ---- prompt tuning / P-tuning v1 -----------------------------------------------------------

@pytest.mark.parametrize("position", [0, 3])
def test_soft_prompt_equals_real_tokens(tiny_config, position):
    base = _tiny(tiny_config)
    model = SoftPromptModel(base, PromptConfig(num_virtual_tokens=3, position=position), init_token_ids=X)
    out = model(IDS)
    assert out.shape == (2, IDS.shape[1], tiny_config.vocab_size)
    full = torch.cat([IDS[:, :position], torch.tensor([X, X]), IDS[:, position:]], dim=1)
    ref = base(full)
    ref = torch.cat([ref[:, :position], ref[:, position + 3:]], dim=1)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    # padding mask: left-padded second row behaves like its unpadded self
    mask = torch.ones_like(IDS)
    mask[1, :2] = 0
    if position == 0:
        got = model(IDS, attention_mask=mask)[1, 2:]
        alone = model(IDS[1:, 2:])[0]
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)


def test_prompt_tuning_trains_only_prompt(tiny_config, tmp_path):
    base = _tiny(tiny_config)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = SoftPromptModel(base, PromptConfig(num_virtual_tokens=4))
    assert count_trainable(model)[0] == 4 * tiny_config.hidden_size
    losses = _train(model)
    assert losses[-1] < losses[0]
    assert all(torch.equal(base.state_dict()[k], v) for k, v in before.items())
    out = model(IDS)
    model.save(tmp_path / "p")
    again = SoftPromptModel.load(_tiny(tiny_config), tmp_path / "p")
    torch.testing.assert_close(again(IDS), out, atol=0, rtol=0)


@pytest.mark.parametrize("encoder", ["lstm", "mlp"])
def test_ptuning_v1_encoder_fold(tiny_config, tmp_path, encoder):
    base = _tiny(tiny_config)
    model = SoftPromptModel(base, PromptConfig(num_virtual_tokens=3, encoder=encoder, encoder_hidden_size=16))
    assert model.prompt_encoder is not None
    losses = _train(model, steps=4, lr=1e-2)
    assert losses[-1] < losses[0]
    out = model(IDS)
    model.save(tmp_path / "v1")  # saved folded
    model.fold()
    assert model.prompt_encoder is None and count_trainable(model)[0] == 3 * tiny_config.hidden_size
    torch.testing.assert_close(model(IDS), out, atol=1e-6, rtol=1e-6)
    again = SoftPromptModel.load(_tiny(tiny_config), tmp_path / "v1")
    torch.testing.assert_close(again(IDS), out, atol=1e-6, rtol=1e-6)


# ---- prefix tuning / P-tuning v2 -----------------------------------------------------------

def test_prefix_from_real_kv_equals_real_tokens(tiny_config):
    base = _tiny(tiny_config)
    model = PrefixModel(base, PrefixConfig(num_virtual_tokens=3, prefix_projection=False), init_token_ids=X)
    ref = base(torch.cat([torch.tensor([X, X]), IDS], dim=1))[:, 3:]
    torch.testing.assert_close(model(IDS), ref, atol=1e-5, rtol=1e-5)
    # incremental decoding through the pre-filled cache equals the full forward
    cache = model.new_cache(2, 32)
    assert isinstance(cache, PrefixCache) and isinstance(cache, KVCache) and cache.length == 3
    a = model(IDS[:, :5], cache=cache)
    b = model(IDS[:, 5:], cache=cache)
    torch.testing.assert_close(torch.cat([a, b], 1), ref, atol=1e-5, rtol=1e-5)
    # a padding mask (B, T) is extended over the prefix
    mask = torch.ones_like(IDS)
    mask[1, :2] = 0
    out = model(IDS, attention_mask=mask)
    torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=1e-5)


def test_prefix_mlp_counts_fold_and_train(tiny_config, tmp_path):
    base = _tiny(tiny_config)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    c = tiny_config
    n, dp, h = 4, 8, 16
    model = PrefixModel(base, PrefixConfig(num_virtual_tokens=n, token_dim=dp, encoder_hidden_size=h))
    out_dim = c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim
    # notes: n x d' + MLP (d' x h + h x out, plus biases) instead of n x out
    assert count_trainable(model)[0] == n * dp + (dp * h + h) + (h * out_dim + out_dim)
    losses = _train(model, steps=6, lr=1e-2)
    assert losses[-1] < losses[0]
    assert all(torch.equal(base.state_dict()[k], v) for k, v in before.items())
    out = model(IDS)
    model.save(tmp_path / "pre")
    model.fold()
    assert model.prefix_mlp is None and count_trainable(model)[0] == n * out_dim
    torch.testing.assert_close(model(IDS), out, atol=1e-6, rtol=1e-6)
    again = PrefixModel.load(_tiny(tiny_config), tmp_path / "pre")
    torch.testing.assert_close(again(IDS), out, atol=1e-6, rtol=1e-6)
    with pytest.raises(UserError, match="'prefix' adapter"):
        load_adapters(_tiny(tiny_config), tmp_path / "pre")
    with pytest.raises(UserError, match="different base"):
        PrefixModel.load(_tiny(tiny_config, seed=3), tmp_path / "pre")


def test_ptuning_v2_deep_prompt_count_and_grad(tiny_config):
    base = _tiny(tiny_config)
    c = tiny_config
    model = PrefixModel(base, PrefixConfig(num_virtual_tokens=5, prefix_projection=False))
    assert count_trainable(model)[0] == c.num_hidden_layers * 2 * c.num_key_value_heads * 5 * c.head_dim
    model.loss(IDS, IDS.roll(-1, 1)).backward()
    g = model.prefix_kv.grad
    assert g is not None and all(g[i].abs().sum() > 0 for i in range(c.num_hidden_layers))


def test_generation_loop_with_virtual_tokens(tiny_config):
    """llmlab.infer's generate_ids (which sizes a plain KVCache for the real prompt) works on
    prefix- and prompt-tuned models and matches greedy decoding of the base on [X; prompt]."""
    from llmlab.infer.generate import generate_ids
    from llmlab.infer.sampling import SamplingParams
    base = _tiny(tiny_config)
    params = SamplingParams(max_new_tokens=6)
    prompt = [5, 17, 33, 2]
    want = list(generate_ids(base, X + prompt, params))
    pre = PrefixModel(base, PrefixConfig(num_virtual_tokens=3, prefix_projection=False), init_token_ids=X)
    soft = SoftPromptModel(base, PromptConfig(num_virtual_tokens=3), init_token_ids=X)
    assert list(generate_ids(pre, prompt, params)) == want
    assert list(generate_ids(soft, prompt, params)) == want


@pytest.mark.parametrize("method,kw", [("lora", {"r": 2}), ("qlora", {"r": 2}), ("adapter", {"r": 3}),
                                       ("prefix", {"num_virtual_tokens": 2, "encoder_hidden_size": 8}),
                                       ("ptuning_v2", {"num_virtual_tokens": 2}),
                                       ("prompt", {"num_virtual_tokens": 2}),
                                       ("ptuning", {"num_virtual_tokens": 2, "encoder_hidden_size": 8})])
def test_every_method_trains_saves_and_reloads(tiny_config, tmp_path, method, kw):
    from llmlab.finetune.methods import attach, load_peft, save_peft
    model = attach(_tiny(tiny_config), method, **kw)
    losses = _train(model, steps=4, lr=2e-2)
    assert losses[-1] < losses[0]
    out = model(IDS)
    save_peft(model, tmp_path / method)
    again = load_peft(_tiny(tiny_config), tmp_path / method)
    torch.testing.assert_close(again(IDS), out, atol=1e-5, rtol=1e-5)


def test_method_errors(tiny_config):
    from llmlab.finetune.methods import attach, save_peft
    with pytest.raises(UserError, match="unknown PEFT method"):
        attach(_tiny(tiny_config), "ia3")
    with pytest.raises(UserError, match="unknown option"):
        attach(_tiny(tiny_config), "lora", rank=4)
    with pytest.raises(UserError, match="no PEFT method"):
        save_peft(_tiny(tiny_config), "/tmp/never")


def test_peft_params_verb(tiny_config, tmp_path, capsys):
    from llmlab.finetune.commands import PeftParamsConfig, run_peft_params
    from llmlab.model.hf import save_hf_dir
    save_hf_dir(_tiny(tiny_config), tmp_path / "m")
    assert run_peft_params(PeftParamsConfig(model=str(tmp_path / "m"), methods=["prompt", "lora"])) == 0
    lines = capsys.readouterr().out.splitlines()
    d = tiny_config.hidden_size
    assert lines[1].split()[:2] == ["prompt", f"{20 * d:,}"]  # 20 virtual tokens x d


@pytest.mark.parametrize("kind", ["prefix", "prompt"])
def test_chunked_decoding_with_padding_mask(tiny_config, kind):
    base = _tiny(tiny_config)
    if kind == "prefix":
        model = PrefixModel(base, PrefixConfig(num_virtual_tokens=3, prefix_projection=False), init_token_ids=X)
    else:
        model = SoftPromptModel(base, PromptConfig(num_virtual_tokens=3, position=1), init_token_ids=X)
    mask = torch.ones_like(IDS)
    mask[1, :2] = 0  # left padding in row 1
    full = model(IDS, attention_mask=mask)
    cache = KVCache.for_model(base, 2, IDS.shape[1])
    a = model(IDS[:, :5], cache=cache, attention_mask=mask[:, :5])
    b = model(IDS[:, 5:], cache=cache, attention_mask=mask)
    got = torch.cat([a, b], 1)
    torch.testing.assert_close(got[0], full[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1, 2:], full[1, 2:], atol=1e-5, rtol=1e-5)


def test_prefix_refuses_gradient_checkpointing(tiny_config):
    base = _tiny(tiny_config)
    base.gradient_checkpointing = True
    model = PrefixModel(base, PrefixConfig(num_virtual_tokens=2)).train()
    with pytest.raises(UserError, match="gradient_checkpointing"):
        model(IDS)
