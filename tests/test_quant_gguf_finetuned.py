"""A fine-tuned SmolLM2 exported as GGUF (issue 20, item 4): a few LoRA steps on a chat example,
merged, written as Q8_0 with the tokenizer and chat template, then read back through gguf-py's
reader and through our loader; what the fine-tuning taught survives the file."""
import copy

import gguf
import pytest
import torch
import torch.nn.functional as F

from llmlab.quant import gguf_export


def _chat_loss(model, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(ids).flatten(0, 1), labels.flatten(), ignore_index=-100)


@pytest.mark.slow
def test_finetuned_smollm2_gguf_round_trip(smollm2, smollm2_tokenizer, tmp_path):
    from llmlab.finetune.lora import merge_and_unload
    from llmlab.finetune.methods import attach
    from llmlab.model.load import load_model
    from llmlab.tokenizer.bpe import load_tokenizer
    from llmlab.tokenizer.chat import encode_chat
    tok = smollm2_tokenizer
    torch.manual_seed(0)
    msgs = [{"role": "user", "content": "What colour is the llmlab logo?"},
            {"role": "assistant", "content": "The llmlab logo is teal with an orange dot."}]
    ids, mask = encode_chat(tok, msgs)
    x = torch.tensor([ids[:-1]])
    y = torch.tensor([[t if m else -100 for t, m in zip(ids[1:], mask[1:])]])
    with torch.no_grad():
        base_loss = _chat_loss(smollm2, x, y).item()

    model = attach(copy.deepcopy(smollm2).train(), "lora", r=8, target_modules=["q_proj", "v_proj", "down_proj"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    for _ in range(6):
        loss = _chat_loss(model, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    merged = merge_and_unload(model).eval()
    with torch.no_grad():
        ft_loss = _chat_loss(merged, x, y).item()
    assert ft_loss < 0.5 * base_loss  # the few steps did teach the reply

    path = tmp_path / "ft.Q8_0.gguf"
    info = gguf_export.write_gguf(merged, tok, path, "Q8_0", name="smollm2-ft")
    assert info["bytes"] == path.stat().st_size

    r = gguf.GGUFReader(path)  # the reference reader
    field = r.fields["tokenizer.chat_template"]
    assert bytes(field.parts[field.data[0]]).decode() == tok.chat_template
    assert len(r.fields["tokenizer.ggml.tokens"].data) == tok.vocab_size
    assert r.fields["general.name"].contents() == "smollm2-ft"
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"

    back, _ = load_model(str(path))  # our loader: each weight is gguf-py's decode of what was written
    sd, ref = back.state_dict(), merged.state_dict()
    for key in ("model.layers.3.mlp.down_proj.weight", "model.layers.29.self_attn.v_proj.weight"):
        w = ref[key].numpy()
        expect = gguf.quants.dequantize(gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0),
                                        gguf.GGMLQuantizationType.Q8_0).reshape(w.shape)
        assert torch.equal(sd[key], torch.from_numpy(expect.copy())), key
    tok2 = load_tokenizer(path)
    assert tok2.chat_template == tok.chat_template and tok2.eos_id == tok.eos_id
    assert encode_chat(tok2, msgs)[0] == ids
    with torch.no_grad():
        back_loss = _chat_loss(back.eval(), x, y).item()
    print(f"\nchat-reply loss: base {base_loss:.4f}, fine-tuned fp32 {ft_loss:.4f}, from the Q8_0 GGUF "
          f"{back_loss:.4f}; file {info['bytes'] / 1e6:.1f} MB")
    # the fine-tuning survives 8-bit blocks: far below the base model, close to the fp32 merged one
    assert back_loss < 0.5 * base_loss and abs(back_loss - ft_loss) < 0.1 * ft_loss + 0.02
