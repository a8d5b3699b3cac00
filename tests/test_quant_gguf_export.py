"""GGUF export: encoders equal gguf-py bit for bit; files round-trip through gguf's reader and ours."""
import os
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch

from llmlab.errors import UserError
from llmlab.quant import gguf_export
from llmlab.quant.gguf_export import encode_blocks, write_gguf


@pytest.mark.parametrize("fmt", ["Q8_0", "Q4_0", "Q4_1"])
def test_encoders_match_gguf_py_bit_for_bit(fmt):
    torch.manual_seed(0)
    w = torch.randn(48, 320) * torch.logspace(-3, 1, 48)[:, None]
    w[0, :32] = 0.0           # an all-zero block (d = 0)
    w[1, :32] = 0.25          # a constant block
    w[2, 5], w[2, 6] = 3.0, -3.0  # a tie for the largest magnitude
    w[3, :32] = torch.arange(32) / 2 - 8  # exact halves: the rounding rule decides
    ref = gguf.quants.quantize(w.numpy(), getattr(gguf.GGMLQuantizationType, fmt))
    assert np.array_equal(encode_blocks(w, fmt).numpy(), ref)


def test_encoder_bad_row():
    with pytest.raises(UserError, match="multiple of 32"):
        encode_blocks(torch.randn(2, 40), "Q8_0")


@pytest.fixture(scope="module")
def tiny(smollm2_tokenizer):
    from llmlab.model.config import ModelConfig
    from llmlab.model.transformer import Transformer
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=smollm2_tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                      max_position_embeddings=128, eos_token_id=smollm2_tokenizer.eos_id)
    return Transformer(cfg).eval(), smollm2_tokenizer


@pytest.fixture(scope="module")
def written(tiny, tmp_path_factory):
    model, tok = tiny
    d = tmp_path_factory.mktemp("gguf")
    return {fmt: (d / f"m.{fmt}.gguf", write_gguf(model, tok, d / f"m.{fmt}.gguf", fmt))
            for fmt in ("F32", "F16", "Q8_0", "Q4_0", "Q4_1")}


@pytest.mark.slow
def test_gguf_reader_sees_types_and_metadata(tiny, written):
    _, tok = tiny
    path, info = written["Q4_0"]
    assert info["bytes"] == path.stat().st_size
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(p.name for p, _ in written.values())
    r = gguf.GGUFReader(path)  # the reference reader (slow on a 49k-token vocabulary: once)
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.ffn_down.weight"] == "Q4_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert types["token_embd.weight"] == "Q8_0" and "output.weight" not in types  # tied, kept at 8 bits
    field = r.fields["tokenizer.chat_template"]
    assert bytes(field.parts[field.data[0]]).decode() == tok.chat_template
    assert r.fields["general.architecture"].contents() == "llama"
    assert r.fields["llama.attention.head_count_kv"].contents() == 2


@pytest.mark.parametrize("fmt", ["F32", "F16", "Q8_0", "Q4_0", "Q4_1"])
def test_round_trip_through_our_loader(tiny, written, fmt):
    from llmlab.model.gguf_file import GGUFFile
    from llmlab.model.load import load_model
    model, tok = tiny
    path, _ = written[fmt]
    types = {t.name: gguf.GGMLQuantizationType(t.qtype) for t in GGUFFile(path).tensors}
    back, _ = load_model(str(path))
    sd = back.state_dict()
    for key, w in model.state_dict().items():
        expect = w
        if w.dim() == 2 and fmt != "F32":
            name = gguf_export.gguf_name("model.embed_tokens.weight" if key == "lm_head.weight" else key)
            qt = types[name]
            expect = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), qt), qt).copy())
            expect = expect.reshape(w.shape)
        assert torch.equal(sd[key], expect), key
    if fmt == "F32":
        ids = torch.tensor([tok.encode("The cat sat")])
        with torch.no_grad():
            assert torch.equal(back(ids), model(ids))


def test_tokenizer_round_trip(tiny, written):
    from llmlab.tokenizer.bpe import load_tokenizer
    _, tok = tiny
    tok2 = load_tokenizer(written["Q8_0"][0])
    text = "Hello wörld 12345 <|im_start|>user\nhi<|im_end|>"
    assert tok2.encode(text) == tok.encode(text) and tok2.eos_id == tok.eos_id
    assert tok2.chat_template == tok.chat_template


def test_failed_export_leaves_nothing(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    calls = []

    def boom(w, fmt):
        calls.append(fmt)
        if len(calls) > 3:
            raise RuntimeError("disk full")
        return real(w, fmt)
    real = gguf_export.encode_blocks
    monkeypatch.setattr(gguf_export, "encode_blocks", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_gguf(model, tok, tmp_path / "x.gguf", "Q4_0")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="unknown GGUF type"):
        write_gguf(model, tok, tmp_path / "x.gguf", "Q3_X")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "llmlab.cli", "quantize", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_cli_bad_input(tmp_path):
    for args, msg in [((f"output_dir={tmp_path}/a.gguf", "type=Q9"), "unknown GGUF type"),
                      ((f"output_dir={tmp_path}/d", "format=hf", "method=smoothquant"), "cannot be saved")]:
        r = _cli(*args)
        assert r.returncode == 2 and msg in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_q6_k_blocks_decode_within_half_a_step():
    from llmlab.quant.kquants import encode_q6_k
    torch.manual_seed(0)
    w = torch.randn(6, 512) * torch.logspace(-2, 0, 6)[:, None]
    w[0, :256] = 0.0
    w[1, 7] = 2.5  # an outlier inside one sub-block
    raw = encode_q6_k(w).numpy()
    assert raw.shape == (6, 2 * 210)
    deq = torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q6_K).copy()).view(6, 512)
    blocks = raw.reshape(-1, 210)
    d = torch.from_numpy(blocks[:, 208:210].copy().view(np.float16).astype(np.float32))  # (12, 1)
    sc = torch.from_numpy(blocks[:, 192:208].copy().view(np.int8).astype(np.float32))  # (12, 16)
    step = (d * sc).abs().repeat_interleave(16, dim=1).view(6, 512)
    err = (deq - w).abs()
    q = (deq / torch.where(step == 0, torch.ones_like(step), step)).round().abs()
    inside = q < 31  # values on the grid's edge may be clipped by design (the scale search trades them)
    assert bool((err[inside] <= step[inside] / 2 + 1e-3 * w.abs()[inside] + 1e-7).all())
    assert float(inside.float().mean()) > 0.9  # 1 in 16 sits at the edge (the sub-block max)
    assert bool((deq[0, :256] == 0).all())
    rel = float(((deq - w) ** 2).mean() / (w ** 2).mean())
    q4 = gguf.quants.dequantize(encode_blocks(w, "Q4_0").numpy(), gguf.GGMLQuantizationType.Q4_0).reshape(6, 512)
    assert rel < 0.1 * float(((torch.from_numpy(q4) - w) ** 2).mean() / (w ** 2).mean())


def test_q6_k_export_round_trip(tiny, tmp_path):
    from llmlab.model.config import ModelConfig
    from llmlab.model.load import load_model
    from llmlab.model.transformer import Transformer
    from llmlab.quant.kquants import encode_q6_k
    _, tok = tiny
    torch.manual_seed(1)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=256, max_position_embeddings=64))
    path = tmp_path / "m.Q6_K.gguf"
    info = write_gguf(model, tok, path, "Q6_K")
    assert info["types"] == {"Q6_K": 2, "Q8_0": 13, "F32": 5}  # only down_proj rows are 256-multiples
    back, _ = load_model(str(path))
    w = model.model.layers[1].mlp.down_proj.weight.detach()
    expect = gguf.quants.dequantize(encode_q6_k(w).numpy(), gguf.GGMLQuantizationType.Q6_K).reshape(w.shape)
    assert torch.equal(back.model.layers[1].mlp.down_proj.weight, torch.from_numpy(expect.copy()))


@pytest.mark.slow
def test_smollm2_q4_1_reexport_is_lossless(smollm2, smollm2_tokenizer, smollm2_path, tmp_path):
    """Re-encoding SmolLM2's decoded Q4_1/Q8_0 weights in their own formats gives the same
    weights back (every block's extremes are on its grid), and a file of about the same size."""
    from llmlab.model.load import load_model
    path = tmp_path / "s.gguf"
    info = write_gguf(smollm2, smollm2_tokenizer, path, "Q4_1")
    assert info["types"] == {"Q4_1": 210, "Q8_0": 1, "F32": 61}
    assert abs(info["bytes"] - smollm2_path.stat().st_size) < 4096
    back, _ = load_model(str(path))
    a, b = smollm2.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_cli_bad_input_on_a_model_dir(tiny, tmp_path):
    """Issue 20's bad-input cases on a real (tiny) model directory: one line, exit code 2, no
    traceback, no output written (windows longer than its context: tests/test_compress_user_dir.py)."""
    from llmlab.model.hf import save_hf_dir
    model, tok = tiny
    d, out = tmp_path / "model", tmp_path / "out"
    save_hf_dir(model, str(d), extra_files=tok.hf_files())
    (tmp_path / "short.txt").write_text("too little text", encoding="utf-8")
    cases = [(("format=xyz",), "unknown format"),
             (("format=hf", "bits=5"), "unsupported bit width"),
             (("format=hf", "group_size=48"), "does not divide"),  # rows of 64 and 128
             (("format=hf", "method=gptq", f"calibration={tmp_path}/missing.txt"), "calibration file not found"),
             (("format=hf", "method=awq", f"calibration={tmp_path}/short.txt", "calibration_length=64"), "too short"),
             (("format=hf", "method=awq", "awq_rows=every"), "awq_rows")]
    for args, msg in cases:
        r = _cli(f"model={d}", f"output_dir={out}", *args)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()[-1]) < 300 and not out.exists(), args
    # an output path holding a file or the user's own folder: refused before the model loads, left as it was
    (tmp_path / "f").write_text("mine", encoding="utf-8")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine", encoding="utf-8")
    for args, msg in [((f"output_dir={tmp_path}/f", "format=hf"), "not a directory"),
                      ((f"output_dir={tmp_path}/mine", "format=hf"), "holds other files"),
                      ((f"output_dir={out}", "format=hf", "method=awq", "num_calibration_samples=0"), "num_calibration_samples"),
                      ((f"output_dir={out}", "format=hf", "method=gptq", "bits=5"), "unsupported bit width"),
                      ((f"output_dir={out}", "format=hf", "method=awq", "awq_sample=every"), "awq_sample must be"),
                      ((f"output_dir={out}", "format=hf", "method=awq", "awq_grid=0"), "awq_grid"),
                      ((f"output_dir={tmp_path}/mine.gguf", "eval_windows=-1"), "eval_windows"),
                      ((f"output_dir={tmp_path}", "type=Q4_0"), "must end in .gguf")]:
        r = _cli(f"model={d}", *args)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert "loaded" not in r.stderr, (args, r.stderr)
    assert (tmp_path / "f").read_text(encoding="utf-8") == "mine" and os.listdir(tmp_path / "mine") == ["notes.txt"]
    assert not out.exists() and not (tmp_path / "mine.gguf").exists()
    # GGUF type names in any case, as llama.cpp's quantize takes them
    r = _cli(f"model={d}", f"output_dir={tmp_path}/q.gguf", "type=q8_0")
    assert r.returncode == 0 and "'Q8_0'" in r.stdout, r.stderr
    # `llmlab prune` on the same dir: windows longer than the model's context (128) are refused
    r = subprocess.run([sys.executable, "-m", "llmlab.cli", "prune", f"model={d}", "window_length=256"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "window_length must be in [2, 128]" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_no_quantizable_weights_is_one_line():
    from torch import nn

    from llmlab.quant.apply import quantize_model
    with pytest.raises(UserError, match="no Linear weights"):
        quantize_model(nn.Sequential(nn.LayerNorm(8)), "rtn")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["Q4_K", "Q6_K"])
def test_k_quant_file_round_trip_through_gguf_reader(tiny, tmp_path, fmt):
    """A K-quant file read by gguf-py's reader: the tensor types it declares, and each K-quant
    tensor decoded by gguf-py equals the weight our loader builds from the same file."""
    from llmlab.model.config import ModelConfig
    from llmlab.model.load import load_model
    from llmlab.model.transformer import Transformer
    _, tok = tiny
    torch.manual_seed(2)
    model = Transformer(ModelConfig(vocab_size=512, hidden_size=256, num_hidden_layers=1, num_attention_heads=4,
                                    num_key_value_heads=2, intermediate_size=512, max_position_embeddings=64)).eval()
    path = tmp_path / f"m.{fmt}.gguf"
    write_gguf(model, tok, path, fmt)
    r = gguf.GGUFReader(path)
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.ffn_down.weight"] == fmt and types["blk.0.attn_norm.weight"] == "F32"
    assert types["token_embd.weight"] == "Q6_K"
    back, _ = load_model(str(path))
    t = next(t for t in r.tensors if t.name == "blk.0.ffn_down.weight")
    w = back.model.layers[0].mlp.down_proj.weight
    got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape)
    assert torch.equal(w, torch.from_numpy(got.copy()))
    assert float((w - model.model.layers[0].mlp.down_proj.weight.detach()).abs().max()) < 0.2 * float(w.abs().max())
