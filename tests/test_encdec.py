"""T5-style encoder-decoder (llmlab/model/encdec.py, t5.py): logits equal transformers'
T5ForConditionalGeneration on random weights; cached generation equals recomputation; HF dirs
round-trip; `llmlab train objective=...` learns and rejects what cannot work (exit code 2)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmlab.errors import UserError
from llmlab.model.encdec import EncDecConfig
from llmlab.model.t5 import from_hf_state, load_t5_dir, save_t5_dir

ROOT = Path(__file__).resolve().parents[1]


def _hf_t5(ffp: str, tie: bool, dec_layers: int = 3):
    from transformers import T5Config, T5ForConditionalGeneration
    torch.manual_seed(0)
    hc = T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=dec_layers, num_heads=4,
                  relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj=ffp,
                  tie_word_embeddings=tie, dropout_rate=0.0, decoder_start_token_id=0)
    return T5ForConditionalGeneration(hc).eval()


@pytest.mark.parametrize("ffp,tie", [("relu", True), ("gated-gelu", False)])  # T5 v1.0, v1.1
def test_t5_logits_match_transformers(ffp, tie, tmp_path):
    hf = _hf_t5(ffp, tie)
    ours = from_hf_state(EncDecConfig.from_hf(hf.config.to_dict()), hf.state_dict(), "hf")
    ids = torch.randint(0, 99, (2, 30))
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, 22:] = 0  # padding in the encoder input
    dec = torch.randint(0, 99, (2, 25))  # longer than the buckets' exact range: log buckets too
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        assert (ours(ids, attention_mask=mask, decoder_input_ids=dec) - ref).abs().max() <= 1e-4
        save_t5_dir(ours, tmp_path / "t5")  # what we write, transformers reads (and we read back)
        from transformers import T5ForConditionalGeneration
        again = T5ForConditionalGeneration.from_pretrained(tmp_path / "t5").eval()
        assert (again(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits - ref).abs().max() <= 1e-4
        back = load_t5_dir(tmp_path / "t5")
        assert torch.equal(back(ids, attention_mask=mask, decoder_input_ids=dec),
                           ours(ids, attention_mask=mask, decoder_input_ids=dec))
        hf.save_pretrained(tmp_path / "hf")  # what transformers writes, the one loader reads
        from llmlab.model.load import load_model
        theirs, _ = load_model(str(tmp_path / "hf"))
        assert (theirs(ids, attention_mask=mask, decoder_input_ids=dec) - ref).abs().max() <= 1e-4


def test_t5_loading_is_strict():
    hf = _hf_t5("relu", True)
    cfg = EncDecConfig.from_hf(hf.config.to_dict())
    state = hf.state_dict()
    with pytest.raises(UserError, match="missing tensors: decoder.block.0.layer.1.EncDecAttention.k.weight"):
        from_hf_state(cfg, {k: v for k, v in state.items() if "block.0.layer.1.EncDecAttention.k" not in k}, "x")
    with pytest.raises(UserError, match="unexpected tensors: extra"):
        from_hf_state(cfg, {**state, "extra": torch.zeros(1)}, "x")


def test_cached_generation_equals_recomputation():
    """Encode once + self-attention KV cache + cross-attention K/V computed once == the full
    teacher-forced decoder rerun on the whole prefix at every step; and equals HF's greedy search."""
    hf = _hf_t5("gated-gelu", False, dec_layers=2)  # (transformers' generate cache wants equal stacks)
    model = from_hf_state(EncDecConfig.from_hf(hf.config.to_dict()), hf.state_dict(), "hf")
    prompt = [5, 17, 42, 8, 3, 99 - 1]
    step = model.stepper(prompt, 12)
    out, logits = [], step(None)
    enc = model.encode(torch.tensor([prompt]))
    with torch.no_grad():
        for _ in range(12):
            dec = torch.tensor([[0] + out])
            full = model.decode(dec, enc)[:, -1]
            assert torch.allclose(logits, full, atol=1e-5)
            out.append(int(full.argmax()))
            logits = step([out[-1]])
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                          min_new_tokens=12)
    assert ref[0, 1:].tolist() == out


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "llmlab.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def _train(tmp_path, *kv):
    from llmlab.config import load_config
    from llmlab.train.commands import VERBS
    verb = VERBS["train"]
    cfg = load_config(verb.config, [f"data={tmp_path / 't.txt'}", "depth=1", "max_length=48",
                                    "per_device_train_batch_size=8", "gradient_accumulation_steps=1",
                                    "learning_rate=3e-3", "disable_tqdm=true", "report_to=jsonl",
                                    "logging_steps=5", "peak_flops=1e9", "val_fraction=0.1", *kv])
    assert verb.run(cfg) == 0


def _losses(run: Path) -> list[float]:
    import json
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


@pytest.fixture
def corpus(tmp_path):
    import random
    rnd = random.Random(0)
    words = "the cat sat on a mat and the dog ran to the red ball while birds sang in tall green trees".split()
    (tmp_path / "t.txt").write_text(" ".join(rnd.choice(words) for _ in range(4000)))
    return tmp_path


def test_train_span_corruption_loss_goes_down_and_generates(corpus):
    """A decoder (prefix LM) and a T5 encoder-decoder trained with span corruption: the loss falls;
    the sentinels land in the saved tokenizer (one id each, T5's ids); `llmlab generate` runs both
    (prefix prefill / encode once + cached decode) and prints what a cache-free greedy decode gives."""
    from llmlab.model.load import load_model
    from llmlab.tokenizer.bpe import ByteLevelBPE, load_tokenizer
    ByteLevelBPE([bytes([i]) for i in range(256)], [], {}).save(corpus / "bytes")  # the .txt data's ids
    for arch in ("prefix_decoder", "encoder_decoder"):
        _train(corpus, "objective=span_corruption", f"architecture={arch}", "max_steps=30",
               f"output_dir={corpus / arch}", f"tokenizer={corpus / 'bytes'}")
        losses = _losses(corpus / arch)
        assert losses[-1] < losses[0] - 1.0, (arch, losses)
        model, _ = load_model(str(corpus / arch / "model"))
        tok = load_tokenizer(corpus / arch / "model")
        ids = model.config.extra["special_tokens"]
        assert ids["<extra_id_0>"] == model.config.vocab_size - 1 == tok.encode("<extra_id_0>")[0]  # T5's ids
        prompt = tok.encode("the cat <extra_id_0> on a mat")
        assert len(prompt) == len("the cat  on a mat") + 1
        r = _cli("generate", f"model={corpus / arch / 'model'}", "prompt=the cat <extra_id_0> on a mat",
                 "temperature=0", "max_new_tokens=8", cwd=corpus)
        assert r.returncode == 0, r.stderr
        want = _greedy_reference(model, prompt, 8)
        assert r.stdout.rstrip("\n") == "the cat <extra_id_0> on a mat" + tok.decode(want)


def _greedy_reference(model, prompt: list[int], n: int) -> list[int]:
    """Greedy tokens recomputed from scratch every step (no cache): the reference for the CLI."""
    out = []
    with torch.no_grad():
        for _ in range(n):
            if getattr(model, "is_encoder_decoder", False):
                logits = model(torch.tensor([prompt]), decoder_input_ids=torch.tensor([[model.config.decoder_start_token_id] + out]))
            else:
                logits = model(torch.tensor([prompt + out]), prefix_lengths=len(prompt))
            out.append(int(logits[0, -1].argmax()))
    return out


def test_objectives_bad_input_exit_2(corpus):
    _train(corpus, "max_steps=1", f"output_dir={corpus / 'causal'}")
    with pytest.raises(UserError, match="causal-only decoder"):
        _train(corpus, "objective=mlm", f"init_from={corpus / 'causal' / 'model'}", f"output_dir={corpus / 'x'}")
    for args, msg in ((["objective=span_corruption", f"init_from={corpus / 'causal' / 'model'}"], "sentinel tokens"),
                      (["objective=mlm", "architecture=decoder"], "causal-only")):
        r = _cli("train", f"data={corpus / 't.txt'}", "max_steps=1", f"output_dir={corpus / 'x'}", *args, cwd=corpus)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name,params", [("t5-small", 60_506_624), ("t5-v1_1-small", 76_961_152)])
def test_presets_have_the_published_shapes(name, params):
    """Preset state dicts have transformers' names and shapes (so hub checkpoints load strictly)."""
    from transformers import T5Config, T5ForConditionalGeneration
    from llmlab.model.encdec import EncoderDecoder
    from llmlab.model.t5 import t5_config
    cfg = t5_config(name)
    with torch.device("meta"):
        ours = EncoderDecoder(cfg)
        hf = T5ForConditionalGeneration(T5Config(**{k: v for k, v in cfg.to_hf().items() if k != "llmlab"}))
    assert ours.num_params() == params
    theirs = {k: tuple(v.shape) for k, v in hf.state_dict().items() if k not in ("encoder.embed_tokens.weight",
                                                                                  "decoder.embed_tokens.weight")}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == theirs
