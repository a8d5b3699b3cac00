"""The SFT loop: assistant-only labels, packing == sequences alone, replay, exact resume, CLI verbs,
outputs, and the user errors on bad input. A tiny random model + a tiny BPE, each test ~1 s."""
from __future__ import annotations

import json

import pytest
import torch

from llmlab.cli import main
from llmlab.errors import UserError
from llmlab.finetune.packing import allow_block_masks, document_mask, pack
from llmlab.finetune.sft import build_data, sft, token_loss_sum, unwrap
from llmlab.finetune.sft_config import SftConfig
from llmlab.finetune.sft_data import collate, encode_records, make_rows, to_messages

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CONV = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"},
                     {"role": "assistant", "content": "The answer is 5."},
                     {"role": "user", "content": "And 4 + 4?"}, {"role": "assistant", "content": "8."}]}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random LLaMA saved as an HF dir with a speedrun-style tokenizer (ChatML template,
    eos <|endoftext|>), the layout of runs/speedrun/train/model."""
    from llmlab.finetune.instruct.builders import arithmetic
    from llmlab.model import Transformer
    from llmlab.model.config import ModelConfig
    from llmlab.model.hf import save_hf_dir
    from llmlab.tokenizer.chat import CHATML
    from llmlab.tokenizer.train_bpe import train_bpe

    lines = [r["prompt"][0]["content"] + " " + r["completion"][0]["content"] for r in arithmetic(200, 0)]
    tok = train_bpe(lines + ["Be brief. And"], vocab_size=320, special_tokens=SPECIAL, chat_template=CHATML,
                    bos_token=None, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    d = tmp_path_factory.mktemp("tiny")
    tok.save(d / "tok")
    files = {p.name: p.read_text(encoding="utf-8") for p in (d / "tok").iterdir()}
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256))
    save_hf_dir(model, d / "model", extra_files=files)
    return d / "model"


def _cfg(tiny_dir, tmp_path, **kw):
    base = dict(model=str(tiny_dir), datasets=["arith_en"], num_examples=48, max_length=128, max_steps=4, logging_steps=1,
                per_device_train_batch_size=4, output_dir=str(tmp_path / "out"), report_to=["jsonl"],
                disable_tqdm=True, eval_max_examples=8)
    return SftConfig(**{**base, **kw})


def test_labels_are_assistant_tokens_only_multi_turn(tiny_dir):
    from llmlab.tokenizer.bpe import load_tokenizer
    tok = load_tokenizer(tiny_dir)
    (x, y), = encode_records(tok, [CONV], max_length=256, progress=False)[0]
    runs, cur = [], []
    for t in y + [-100]:
        if t != -100:
            cur.append(t)
        elif cur:
            runs, cur = runs + [cur], []
    # both replies, each closed by <|im_end|> (ChatML's end of turn; this tokenizer's eos is <|endoftext|>)
    assert [tok.decode(r) for r in runs] == ["The answer is 5.<|im_end|>", "8.<|im_end|>"]
    assert len(x) == len(y)
    rec = {"prompt": "What is 2 + 3?", "completion": "The answer is 5."}
    assert to_messages(rec)[1] == {"role": "assistant", "content": "The answer is 5."}
    (_, y_all), = encode_records(tok, [CONV], 256, assistant_only=False, progress=False)[0]
    assert all(t != -100 for t in y_all)


def test_pack_first_fit_decreasing():
    rows = pack([5, 3, 8, 2, 2], capacity=10)
    assert sorted(i for r in rows for i in r) == [0, 1, 2, 3, 4]
    assert all(sum([5, 3, 8, 2, 2][i] for i in r) <= 10 for r in rows) and len(rows) == 2
    m = document_mask(torch.tensor([[0, 0, 1, 1, -1]]))[0, 0]
    assert m.tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]


@pytest.mark.parametrize("method", ["full", "lora", "prefix"])
def test_packed_batch_equals_sequences_alone(tiny_dir, tmp_path, method):
    """Same summed loss (and same per-token logits) packed in one row as run one by one."""
    from llmlab.finetune.sft import build_model
    cfg = _cfg(tiny_dir, tmp_path, method=method, peft={"num_virtual_tokens": 3} if method == "prefix" else {})
    model, tok, _ = build_model(cfg)
    core = allow_block_masks(unwrap(model))
    if method == "lora":  # a non-zero B, so the adapter matters
        for n, p in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, 0, 0.1)
    model.eval()
    recs = [CONV, {"prompt": [{"role": "user", "content": "What is 7 - 2?"}],
                   "completion": [{"role": "assistant", "content": "The answer is 5."}]}]
    ex, _ = encode_records(tok, recs, 256, progress=False)
    packed = collate(make_rows(ex, 256, packing=True), 0)
    assert packed["input_ids"].shape[0] == 1 and packed["doc_ids"].max() == 1
    n = model.cfg.num_virtual_tokens if method == "prefix" else 0
    with torch.no_grad():
        together = token_loss_sum(model, core, packed, prefix_n=n)
        alone = sum(token_loss_sum(model, core, collate(make_rows([e], 256, packing=False), 0)) for e in ex)
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
        if method == "full":
            mask = document_mask(packed["doc_ids"])
            logits = model(packed["input_ids"], attention_mask=mask, position_ids=packed["position_ids"])
            first = model(torch.tensor([ex[0][0]]))
            second = model(torch.tensor([ex[1][0]]))
            torch.testing.assert_close(logits[0], torch.cat([first[0], second[0]]), atol=1e-5, rtol=1e-5)
            # without the block mask the second example would see the first: different logits
            naive = model(packed["input_ids"])
            assert (naive[0, len(ex[0][0]):] - second[0]).abs().max() > 1e-3


def test_right_padding_needs_no_mask(tiny_dir, tmp_path):
    from llmlab.finetune.sft import build_model
    model, tok, _ = build_model(_cfg(tiny_dir, tmp_path))
    model.eval()
    ex, _ = encode_records(tok, [CONV, {"prompt": "Hi", "completion": "Hello."}], 256, progress=False)
    padded = collate(make_rows(ex, 256, packing=False), pad_id=0)
    with torch.no_grad():
        both = token_loss_sum(model, model, padded)
        alone = sum(token_loss_sum(model, model, collate(make_rows([e], 256, False), 0)) for e in ex)
    torch.testing.assert_close(both, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method,packing", [("full", True), ("lora", False)])
def test_resume_is_exact(tiny_dir, tmp_path, method, packing):
    """Stopped after step 2 (its checkpoint written) and resumed: the same weights as never stopped."""
    kw = dict(method=method, packing=packing, max_steps=4, save_steps=2, num_examples=64)
    if method == "lora":
        kw["peft"] = {"lora_dropout": 0.1}  # dropout: the RNG state must be restored too
    full = sft(_cfg(tiny_dir, tmp_path / "a", **kw), progress=False)
    part = sft(_cfg(tiny_dir, tmp_path / "b", **kw), stop_at_step=2, progress=False)
    assert part.step == 2 and not (tmp_path / "b" / "out" / "model").exists()
    resumed = sft(_cfg(tiny_dir, tmp_path / "b", resume_from_checkpoint="auto", **kw), progress=False)
    assert resumed.step == 4
    a = {n: p for n, p in full.model.named_parameters() if p.requires_grad}
    b = {n: p for n, p in resumed.model.named_parameters() if p.requires_grad}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in map(json.loads, (tmp_path / "b" / "out" / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4]


def test_gradient_accumulation_weighs_every_token_equally(tiny_dir, tmp_path):
    """batch 4 x accumulation 1 and batch 2 x accumulation 2 take the same optimizer step (AdamW with
    a huge epsilon is plain SGD on the gradient, so the update shows the loss normalisation)."""
    from llmlab.model.hf import load_hf_dir
    w0 = dict(load_hf_dir(tiny_dir).named_parameters())
    kw = dict(max_steps=1, learning_rate=1.0, adam_epsilon=1.0, max_grad_norm=0.0, seed=3, save_strategy="no",
              eval_max_examples=0)
    one = sft(_cfg(tiny_dir, tmp_path / "a", per_device_train_batch_size=4, **kw), progress=False)
    two = sft(_cfg(tiny_dir, tmp_path / "b", per_device_train_batch_size=2, gradient_accumulation_steps=2, **kw),
              progress=False)
    for (n, p), (_, q) in zip(one.model.named_parameters(), two.model.named_parameters()):
        torch.testing.assert_close(p - w0[n], q - w0[n], atol=1e-7, rtol=1e-4, msg=n)


def test_replay_rows(tiny_dir, tmp_path):
    from llmlab.tokenizer.bpe import load_tokenizer
    text = tmp_path / "pre.txt"
    text.write_text("\n".join(f"What is {i} + {i}? It is {2 * i}." for i in range(60)), encoding="utf-8")
    cfg = _cfg(tiny_dir, tmp_path, replay_data=str(text), replay_ratio=0.25, eval_max_examples=0)
    loader, _, stats = build_data(cfg, load_tokenizer(tiny_dir), 320, progress=False)
    assert stats["replay_rows"] == round(stats["sft_rows"] / 3)
    replay = loader.rows[stats["sft_rows"]:]
    assert all(len(r["labels"]) == 128 and (r["labels"] != -100).all() for r in replay)
    res = sft(cfg, progress=False)
    assert res.step == 4
    from llmlab.data.shards import write_shards
    from llmlab.finetune.sft_data import replay_tokens
    tok = load_tokenizer(tiny_dir)
    write_shards(text.read_text().splitlines(), tok, tmp_path / "shards")
    from_shards = replay_tokens(str(tmp_path / "shards"), tok, 320)
    assert from_shards.tolist() == replay_tokens(str(text), tok, 320).tolist()  # same stream, eos between docs
    with pytest.raises(UserError, match="vocab_size 100"):
        replay_tokens(str(tmp_path / "shards"), tok, 100)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": 1}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.jsonl:2"):
        sft(_cfg(tiny_dir, tmp_path, replay_data=str(bad), replay_ratio=0.5), progress=False)
    with pytest.raises(UserError, match="replay_data"):
        _cfg(tiny_dir, tmp_path, replay_ratio=0.5)


def test_outputs_full_model_and_adapter(tiny_dir, tmp_path):
    from llmlab.finetune.methods import load_peft
    from llmlab.model.hf import load_hf_dir
    from llmlab.tokenizer.bpe import load_tokenizer
    res = sft(_cfg(tiny_dir, tmp_path / "f", packing=True), progress=False)
    assert res.output.name == "model"
    tok = load_tokenizer(res.output)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"  # generation stops at the end of a reply
    model = load_hf_dir(res.output)
    assert model.config.eos_token_id == tok.eos_id
    for n, p in model.state_dict().items():
        torch.testing.assert_close(p, res.model.state_dict()[n])
    res = sft(_cfg(tiny_dir, tmp_path / "p", method="prefix"), progress=False)
    assert res.output.name == "adapter" and (res.output / "tokenizer_config.json").is_file()
    base = load_hf_dir(tiny_dir)
    loaded = load_peft(base, res.output).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), res.model.eval()(ids), atol=1e-5, rtol=1e-5)


def test_cli_sft_and_peft_verbs(tiny_dir, tmp_path, capsys):
    common = [f"model={tiny_dir}", "datasets=arith_en", "num_examples=24", "max_length=64", "max_steps=2",
              "report_to=jsonl", "disable_tqdm=true", "eval_max_examples=0"]
    assert main(["sft", *common, f"output_dir={tmp_path / 's'}"]) == 0
    assert (tmp_path / "s" / "model" / "model.safetensors").is_file()
    assert main(["peft", "lora", *common, f"output_dir={tmp_path / 'l'}", "r=2", "target_modules=q_proj,k_proj"]) == 0
    conf = json.loads((tmp_path / "l" / "adapter" / "adapter_config.json").read_text())
    assert conf["r"] == 2 and conf["target_modules"] == ["k_proj", "q_proj"]
    assert main(["peft", "ptuning", *common, f"output_dir={tmp_path / 'p'}", "num_virtual_tokens=4"]) == 0
    assert main(["sft", *common, "method=adapter", "peft.r=3", f"output_dir={tmp_path / 'a'}"]) == 0
    capsys.readouterr()
    assert main(["peft", "lora", *common, "r=2", "target_modules=nope_proj", f"output_dir={tmp_path / 'x'}"]) == 2
    assert "matches no Linear module" in capsys.readouterr().err
    assert main(["peft", "params", "--help"]) == 0


def test_bad_input_errors(tiny_dir, tmp_path):
    bad = tmp_path / "d.jsonl"
    good = json.dumps(CONV)
    bad.write_text(good + "\n{oops\n" + good + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"d\.jsonl:2: invalid JSON \(.* at column 2\) \(pass on_bad_line=skip"):
        sft(_cfg(tiny_dir, tmp_path, datasets=[str(bad)]), progress=False)
    assert sft(_cfg(tiny_dir, tmp_path, datasets=[str(bad)], on_bad_line="skip", max_steps=1),
               progress=False).data["examples"] == 2
    pref = tmp_path / "p.jsonl"
    pref.write_text(json.dumps({"prompt": "hi", "chosen": "hello", "rejected": "go"}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"p\.jsonl:1: 'chosen'/'rejected' is preference data \(llmlab dpo"):
        sft(_cfg(tiny_dir, tmp_path, datasets=[str(pref)]), progress=False)
    no_reply = tmp_path / "n.jsonl"
    no_reply.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"n\.jsonl:1: conversation has no assistant turn"):
        sft(_cfg(tiny_dir, tmp_path, datasets=[str(no_reply)]), progress=False)
    with pytest.raises(UserError, match="no training example has an assistant token within max_length=4"):
        sft(_cfg(tiny_dir, tmp_path, max_length=4), progress=False)
    with pytest.raises(UserError, match="matches no Linear"):
        sft(_cfg(tiny_dir, tmp_path, method="lora", peft={"target_modules": ["qq_proj"]}), progress=False)
    with pytest.raises(UserError, match="unknown config key 'peft.rank'"):
        sft(_cfg(tiny_dir, tmp_path, method="lora", peft={"rank": 4}), progress=False)
    with pytest.raises(UserError, match="neither a builder"):
        sft(_cfg(tiny_dir, tmp_path, datasets=["no_such_set"]), progress=False)
    with pytest.raises(UserError, match="packing=true does not work with method=prompt"):
        sft(_cfg(tiny_dir, tmp_path, method="prompt", packing=True), progress=False)
    with pytest.raises(UserError, match="context window"):
        sft(_cfg(tiny_dir, tmp_path, max_length=300), progress=False)
    with pytest.raises(UserError, match="method: unknown 'dora'"):
        _cfg(tiny_dir, tmp_path, method="dora")


def test_adapter_for_another_base_is_refused(tiny_dir, tmp_path):
    from llmlab.model import Transformer
    from llmlab.model.hf import load_hf_dir, save_hf_dir
    from llmlab.tokenizer.bpe import load_tokenizer
    res = sft(_cfg(tiny_dir, tmp_path / "a", method="lora", max_steps=1), progress=False)
    torch.manual_seed(9)
    other = Transformer(load_hf_dir(tiny_dir).config)  # same shapes, other weights
    files = {n: (tiny_dir / n).read_text(encoding="utf-8") for n in ("tokenizer.json", "tokenizer_config.json")}
    save_hf_dir(other, tmp_path / "other", extra_files=files)
    assert load_tokenizer(tmp_path / "other").vocab_size == 320
    kw = dict(method="lora", init_adapter=str(res.output), max_steps=1)
    with pytest.raises(UserError, match="trained on a different base model"):
        sft(_cfg(tiny_dir, tmp_path / "b", model=str(tmp_path / "other"), **kw), progress=False)
    assert sft(_cfg(tiny_dir, tmp_path / "c", model=str(tmp_path / "other"), allow_other_base=True, **kw),
               progress=False).step == 1
    cont = sft(_cfg(tiny_dir, tmp_path / "d", **kw), progress=False)  # same base: continues training
    assert cont.step == 1
    with pytest.raises(UserError, match="is a 'lora' adapter; method=prefix"):
        sft(_cfg(tiny_dir, tmp_path / "e", method="prefix", init_adapter=str(res.output)), progress=False)


def test_speedrun_stage_quick(tiny_dir, tmp_path):
    """The call the speedrun makes for its SFT stage: pretrained dir in, chat model dir out."""
    from llmlab.finetune.sft import run_sft, speedrun_sft_config
    from llmlab.tokenizer.bpe import load_tokenizer
    cfg = speedrun_sft_config(tiny_dir, tmp_path / "sft")
    assert (cfg.method, cfg.packing, cfg.max_length, cfg.max_steps) == ("full", True, 256, 100)
    assert len(cfg.datasets) == 6
    out = run_sft(speedrun_sft_config(tiny_dir, tmp_path / "sft", quick=True, datasets=["arith_en", "chitchat_zh"]))
    assert out == tmp_path / "sft" / "model" and (out / "model.safetensors").is_file()
    tok = load_tokenizer(out)
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template


@pytest.mark.slow
def test_sft_smollm2_lora_packed(tmp_path):
    """SmolLM2-135M: a few LoRA steps on packed arithmetic rows lower the held-out loss, and the saved
    adapter reloads onto a fresh base with the trained model's logits."""
    from llmlab.finetune.methods import load_peft
    from llmlab.finetune.sft import heldout_loss
    from llmlab.model.load import load_model
    cfg = SftConfig(model="smollm2", method="lora", datasets=["arith_en"], num_examples=200, max_length=256,
                    packing=True, per_device_train_batch_size=2, max_steps=4, learning_rate=2e-3,
                    output_dir=str(tmp_path / "out"), report_to=["jsonl"], eval_max_examples=8, disable_tqdm=True)
    base, path = load_model("smollm2")
    from llmlab.tokenizer.bpe import load_tokenizer
    tok = load_tokenizer(path)
    _, rows, _ = build_data(cfg, tok, base.config.vocab_size, progress=False)
    before = heldout_loss(base, base, rows, 4, tok.pad_id or 0, "cpu")
    res = sft(cfg, progress=False)
    assert res.eval_loss < before
    ids = torch.tensor([tok.encode("What is 3 + 4?")])
    with torch.no_grad():
        torch.testing.assert_close(load_peft(base, res.output).eval()(ids), res.model.eval()(ids), atol=1e-4, rtol=1e-4)


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["full", "lora"])
def test_tail_average_is_the_mean_of_the_last_iterates(tiny_dir, tmp_path, method):
    """average_last=0.5 of 6 steps: the model is the mean of the weights after steps 4, 5, 6 of the
    same run without averaging (read from its per-step checkpoints), and the training is unchanged."""
    from llmlab.checkpoint import load_tensors
    kw = dict(method=method, max_steps=6, save_steps=1, save_total_limit=0, learning_rate=0.05)
    plain = sft(_cfg(tiny_dir, tmp_path / "a", **kw), progress=False)
    avg = sft(_cfg(tiny_dir, tmp_path / "b", average_last=0.5, **kw), progress=False)
    ck = {s: load_tensors(tmp_path / "a" / "out" / f"checkpoint-{s}" / "trainable.safetensors") for s in (3, 4, 5, 6)}
    # the online weights move inside the window (the cosine's last step has lr 0), so the mean is not
    # the final iterate
    assert any(not torch.equal(ck[4][k], ck[6][k]) for k in ck[6])
    for s in (3, 4, 5):  # averaging never feeds back into training
        got = load_tensors(tmp_path / "b" / "out" / f"checkpoint-{s}" / "trainable.safetensors")
        assert all(torch.equal(got[k], ck[s][k]) for k in ck[s])
    final = _trainable(plain.model)
    assert all(torch.equal(final[k], ck[6][k]) for k in final)
    mean = {k: (ck[4][k] + ck[5][k] + ck[6][k]) / 3 for k in ck[6]}
    got = _trainable(avg.model)
    assert got.keys() == mean.keys()
    for k in mean:
        torch.testing.assert_close(got[k], mean[k], atol=1e-6, rtol=1e-5, msg=k)
    if method == "full":  # the exported model is the averaged one
        from llmlab.model.hf import load_hf_dir
        saved = dict(load_hf_dir(tmp_path / "b" / "out" / "model").named_parameters())
        assert saved.keys() == got.keys()
        assert all(torch.equal(saved[k], got[k]) for k in got)


def test_tail_average_resume_is_exact(tiny_dir, tmp_path):
    """Stopped inside the averaging window (after step 5 of 6, average over steps 4-6) and resumed:
    the same averaged weights as never stopped."""
    kw = dict(max_steps=6, save_steps=1, average_last=0.5, learning_rate=0.05)
    full = sft(_cfg(tiny_dir, tmp_path / "a", **kw), progress=False)
    sft(_cfg(tiny_dir, tmp_path / "b", **kw), stop_at_step=5, progress=False)
    resumed = sft(_cfg(tiny_dir, tmp_path / "b", resume_from_checkpoint="auto", **kw), progress=False)
    a, b = _trainable(full.model), _trainable(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tail_average_bad_value(tiny_dir, tmp_path):
    with pytest.raises(UserError, match="average_last"):
        _cfg(tiny_dir, tmp_path, average_last=1.5)
