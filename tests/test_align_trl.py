"""Cross-check against TRL itself: the same weights, tokens and batch give the same DPO/IPO loss.

Slow (importing TRL and datasets takes ~10 s); the hand-computed loss tests run in the fast suite.
"""
from __future__ import annotations

import random

import pytest
import torch

from llmlab.align.preference_trainer import PreferenceConfig, PreferenceTrainer
from llmlab.align.toy import CharTokenizer
from llmlab.model import ModelConfig, Transformer

pytestmark = pytest.mark.slow


def hf_copy(cfg, ours):
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmlab.model.hf import config_to_hf
    d = {k: v for k, v in config_to_hf(cfg).items() if k not in ("architectures", "torch_dtype", "dtype")}
    m = LlamaForCausalLM(LlamaConfig(**d))
    m.load_state_dict(ours.state_dict(), strict=False)
    return m.eval()


def hf_tokenizer(tok):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {c: i for i, c in enumerate(tok.alphabet)} | {"<pad>": tok.pad_id, "</s>": tok.eos_id}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    t.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="</s>")


@pytest.mark.parametrize("loss_type", ["dpo", "ipo"])
def test_loss_equals_trl_dpotrainer(loss_type, tmp_path):
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    tok = CharTokenizer()
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, eos_token_id=tok.eos_id,
                      pad_token_id=tok.pad_id)
    rng = random.Random(0)
    rows = []
    for _ in range(8):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        rows.append({"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + rng.randint(1, 30))})
    torch.manual_seed(0)
    pol = Transformer(cfg)
    torch.manual_seed(1)
    ref = Transformer(cfg)  # a different reference, so the loss is not trivially log 2
    ours = PreferenceTrainer(pol, ref, tok, rows, PreferenceConfig(loss_type=loss_type, beta=0.1,
                                                                  per_device_train_batch_size=8))
    with torch.no_grad():
        our_loss, _ = ours.loss(list(range(8)))
    args = trl.DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=1, beta=0.1,
                         loss_type=[loss_type if loss_type == "ipo" else "sigmoid"], report_to=[], use_cpu=True,
                         save_strategy="no", disable_tqdm=True)
    t = trl.DPOTrainer(model=hf_copy(cfg, pol), ref_model=hf_copy(cfg, ref), args=args,
                       train_dataset=datasets.Dataset.from_list(rows), processing_class=hf_tokenizer(tok))
    ex = t.train_dataset[0]
    assert (ex["prompt_ids"], ex["chosen_ids"], ex["rejected_ids"]) == ours.items[0][:2] + ours.items[0][3:]
    batch = t.data_collator([t.train_dataset[i] for i in range(8)])
    with torch.no_grad():
        trl_loss = t.compute_loss(t.model, batch)
    assert our_loss.item() == pytest.approx(trl_loss.item(), rel=1e-4, abs=1e-5)


def test_kto_loss_equals_trl_ktotrainer(tmp_path):
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    tok = CharTokenizer()
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, eos_token_id=tok.eos_id,
                      pad_token_id=tok.pad_id)
    rng, rows = random.Random(0), []
    for i in range(8):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        good = i % 4 != 3  # unbalanced labels: z0's effect on the loss does not cancel out
        rows.append({"prompt": f"{a}+{b}=", "completion": str(a + b if good else a + b + 3), "label": good})
    torch.manual_seed(0)
    pol = Transformer(cfg)
    torch.manual_seed(1)
    ref = Transformer(cfg)
    ours = PreferenceTrainer(pol, ref, tok, rows, PreferenceConfig(loss_type="kto", beta=0.5,
                                                                  per_device_train_batch_size=8))
    with torch.no_grad():
        our_loss, stats = ours.loss(list(range(8)))
    args = trl.KTOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=1, beta=0.5,
                         report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    t = trl.KTOTrainer(model=hf_copy(cfg, pol), ref_model=hf_copy(cfg, ref), args=args,
                       train_dataset=datasets.Dataset.from_list(rows), processing_class=hf_tokenizer(tok))
    for i in range(8):  # same mismatched (prompt, completion) pairs for the KL reference point
        ex = t.train_dataset[i]
        assert (ex["prompt_ids"], ex["completion_ids"], ex["KL_completion_ids"]) == \
            (ours.items[i][0], ours.items[i][1], ours.items[i][3][1])
    batch = t.data_collator([t.train_dataset[i] for i in range(8)])
    with torch.no_grad():
        trl_loss = t.compute_loss(t.model, batch)
    assert stats["kl_ref_point"] > 0  # the reference point is active, not clamped away
    # Known residual: with identical token batches, TRL's KL reference point differs from ours by ~0.15%
    # (not yet explained; DPO/IPO agree to 1e-5). Pairing the KL rows differently changes z0 by ~3%, so
    # these tolerances still pin the pairing and the formula.
    trl_kl = [v for mode in t._metrics.values() for v in mode.get("kl", [])]  # logged under train or eval
    assert stats["kl_ref_point"] == pytest.approx(trl_kl[-1], rel=5e-3)
    assert our_loss.item() == pytest.approx(trl_loss.item(), rel=5e-4)
