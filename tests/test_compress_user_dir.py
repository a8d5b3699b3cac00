"""`llmlab quantize / prune / distill` on a user's own model dir whose context (128, as the speedrun model's) is
shorter than the usual 256-token windows, and the dirs they write load with their tokenizer (issue 20)."""
from pathlib import Path

import pytest
import torch

from llmlab.errors import UserError


DOCS = [f"Document {i}: " + " ".join(f"the river town of Oak {i + j} grew around its mill, and its people traded grain."
                                   for j in range(8)) for i in range(60)]


@pytest.fixture(scope="module")
def tok():
    from llmlab.tokenizer.train_bpe import train_bpe
    return train_bpe(DOCS, vocab_size=300, special_tokens=["<|endoftext|>"], bos_token=None,
                     eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def model_dir(tok, tmp_path_factory):
    from llmlab.model.config import ModelConfig
    from llmlab.model.hf import save_hf_dir
    from llmlab.model.transformer import Transformer
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128, eos_token_id=tok.eos_id)
    d = tmp_path_factory.mktemp("user") / "model"
    save_hf_dir(Transformer(cfg).eval(), d, extra_files=tok.hf_files())
    return d


def test_hf_files_are_what_save_writes(tok, tmp_path):
    files = tok.hf_files()
    out = tok.save(tmp_path / "tok")
    assert {p.name: p.read_text(encoding="utf-8") for p in out.iterdir()} == files


def test_quantize_refuses_windows_longer_than_the_context(model_dir, tmp_path):
    from llmlab.quant.commands import QuantizeConfig, run_quantize
    with pytest.raises(UserError, match=r"calibration_length must be in \[2, 128\] \(the model's context\), got 256"):
        run_quantize(QuantizeConfig(model=str(model_dir), format="hf", method="awq", output_dir=str(tmp_path / "q")))
    assert not (tmp_path / "q").exists()


def test_distill_refuses_a_seq_len_beyond_the_teachers_context(model_dir, tmp_path):
    from llmlab.compress.distill import DistillConfig, run_distill
    with pytest.raises(UserError, match=r"seq_len must be in \[2, 128\]"):
        run_distill(DistillConfig(teacher=str(model_dir), seq_len=256, output_dir=str(tmp_path / "s")))
    assert not (tmp_path / "s").exists()


def test_distilled_student_dir_loads_with_the_teachers_tokenizer(model_dir, tmp_path, tok, monkeypatch):
    from llmlab.compress.distill import DistillConfig, run_distill
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    monkeypatch.setattr("llmlab.quant.calibrate.wiki_split", lambda heldout: DOCS)  # no Wikipedia load
    out = tmp_path / "student"
    run_distill(DistillConfig(teacher=str(model_dir), student_layers=1, student_hidden=16, student_heads=2, max_steps=1,
                              batch_size=1, seq_len=16, val_windows=1, eval_windows=1, output_dir=str(out)))
    assert (out / "tokenizer.json").is_file()
    _, back = load_model_and_tokenizer(str(out), device="cpu")
    assert back.encode("The river town") == tok.encode("The river town") and Path(out / "model.safetensors").is_file()
