"""LLaVA-1.5's multi-turn packing (`llmlab mm llava pack_turns=N`): several of an image's questions as one
conversation per row. The row's text equals SmolLM2's chat template rendered over the whole conversation,
every answer (and its <|im_end|>) is a label and nothing else is, the loss equals a cross-entropy computed
by hand over those labels, the shared chat prefix stays exact, and the sampler draws distinct questions of
one image (with pack_turns=1 exactly the plain sampler's draws)."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.multimodal.llava import SYSTEM, Llava, lm_hidden_from_embeds
from llmlab.multimodal.vit import ViTConfig, VisionTransformer

QS = ("what color is the shape?", "is there a circle?", "what shape is in the image?")
ANS = ("red", "no", "triangle")


def _tiny(tok, seed: int = 0) -> Llava:
    torch.manual_seed(seed)
    lm = Transformer(ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)).eval()
    lm.requires_grad_(False)
    vit = VisionTransformer(ViTConfig(image_size=8, patch_size=4, in_chans=3, embed_dim=16, depth=1, num_heads=2))
    return Llava(vit, lm, tok)


@pytest.fixture(scope="module")
def llava(smollm2_tokenizer):
    return _tiny(smollm2_tokenizer)


def _conversation_ids(tok, qs, ans):
    """The reference: the chat template over the whole conversation, the text after <image>, and the
    token spans of each assistant answer (found by rendering each prefix of the conversation)."""
    msgs = [{"role": "system", "content": SYSTEM}]
    spans = []
    for t, (q, a) in enumerate(zip(qs, ans)):
        msgs.append({"role": "user", "content": f"<image>\n{q}" if t == 0 else q})
        start = len(tok.encode(tok.apply_chat_template(msgs).split("<image>")[1]))
        msgs.append({"role": "assistant", "content": a})
        spans.append((start, len(tok.encode(a)) + 1))  # the answer and its <|im_end|>
    text = tok.apply_chat_template(msgs, add_generation_prompt=False).split("<image>")[1]
    return tok.encode(text), spans


def test_packed_row_is_the_chat_template_and_labels_every_answer(llava):
    tok, n_img, P = llava.tok, 4, len(llava._before)
    images = torch.rand(2, 3, 8, 8)
    x, y, plen = llava._batch(images, [QS, QS[0]], [ANS, ANS[0]])
    ids, spans = _conversation_ids(tok, QS, ANS)
    emb = llava.lm.model.embed_tokens.weight
    row = x[0, P + n_img:]
    # the template's text after the last answer is "<|im_end|>\n": the row stops at the <|im_end|>
    assert ids[len(row):] == tok.encode("\n")
    assert torch.allclose(row, emb[ids[:len(row)]])
    want = torch.full((x.shape[1],), -100)
    for start, n in spans:  # position t predicts token t+1
        want[P + n_img + start - 1:P + n_img + start - 1 + n] = torch.tensor(ids[start:start + n])
    assert torch.equal(y[0], want)
    assert (y[0] != -100).sum() == sum(len(tok.encode(a)) + 1 for a in ANS)
    assert plen[0] == x.shape[1] - (len(tok.encode(ANS[-1])) + 1)
    # a one-question row in the same batch is what it always was: right padding, its answer labelled
    single, ys, _ = llava._batch(images[1:], [QS[0]], [ANS[0]])
    assert torch.allclose(x[1, :single.shape[1]], single[0]) and torch.equal(y[1, :ys.shape[1]], ys[0])
    assert (y[1, ys.shape[1]:] == -100).all()


def test_packed_loss_equals_cross_entropy_by_hand(llava):
    from llmlab.finetune.lora import LoraConfig, apply_lora
    images = torch.rand(2, 3, 8, 8)
    qs, ans = [QS, QS[1:]], [ANS, ANS[1:]]
    x, y, _ = llava._batch(images, qs, ans)
    with torch.no_grad():
        logits = llava.lm.lm_head(lm_hidden_from_embeds(llava.lm, x))
        ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)
        assert llava.loss(images, qs, ans).item() == pytest.approx(ref.item(), rel=1e-5)
    # gradients through the shared prefix equal the full rows' with LoRA on (another model: the fixture stays plain)
    m = _tiny(llava.tok, seed=1)
    apply_lora(m.lm, LoraConfig(r=2, lora_alpha=4))
    for p in m.lm.parameters():
        if p.requires_grad:  # LoRA's B starts at 0: move it so every gradient path is live
            p.data.add_(0.05 * torch.randn_like(p))
    grads = []
    for share in (False, True):
        m.share_prefix = share
        m.zero_grad(set_to_none=True)
        m.loss(images, qs, ans).backward()
        grads.append([p.grad.clone() for p in m.parameters() if p.requires_grad])
    assert len(grads[0]) > 4 and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*grads))


def test_rows_of_several_questions_need_as_many_answers(llava):
    with pytest.raises(ValueError, match="a row of 3 questions needs as many answers"):
        llava._batch(torch.rand(1, 3, 8, 8), [QS], [ANS[:2]])
    with pytest.raises(ValueError, match="a row of 3 questions"):
        llava._batch(torch.rand(1, 3, 8, 8), [QS])


def _ds():
    from llmlab.multimodal.data import ImageSet
    qa = [[(f"q{i}.{j}", f"a{i}.{j}") for j in range(n)] for i, n in enumerate((5, 1, 3, 8))]
    return ImageSet(torch.zeros(4, 3, 4, 4), torch.zeros(4, dtype=torch.long), ["x"], [""] * 4, "easy_vqa", qa)


def test_packed_sampler_draws_distinct_questions_of_one_image():
    from llmlab.multimodal.llava_train import _packed, _vqa_examples
    ds = _ds()
    ex, one = _vqa_examples(ds), _packed(ds, 1)
    r1, r2 = random.Random(5), random.Random(5)
    assert [one(r1) for _ in range(50)] == [ex[r2.randrange(len(ex))] for _ in range(50)]  # pack_turns=1: unchanged
    draw, rng, firsts = _packed(ds, 3), random.Random(0), set()
    for _ in range(400):
        i, qs, ans = draw(rng)
        assert len(qs) == min(3, len(ds.qa[i])) == len(set(qs))
        assert all((q, a) in ds.qa[i] for q, a in zip(qs, ans))
        firsts.add(qs[0])
    assert len(firsts) > 10  # the order is shuffled: many questions come first


def test_run_with_packed_rows_and_a_bad_value(tmp_path, monkeypatch):
    from tests.test_multimodal_llava import _fake_easy_vqa
    from tests.tiny_mm_model import save_tiny_llava
    from llmlab.errors import UserError
    from llmlab.multimodal import data as mmdata
    from llmlab.multimodal.llava_train import LlavaConfig, run
    monkeypatch.setattr(mmdata, "easy_vqa", _fake_easy_vqa)
    root = save_tiny_llava(tmp_path)
    kw = dict(lm=str(root.parent / "lm"), vision_run=str(root.parent / "clip"), stage1_steps=1, stage2_steps=2,
              per_device_train_batch_size=2, lora_r=2, validation=8, eval_limit=6)
    out = run(LlavaConfig(output_dir=str(tmp_path / "packed"), pack_turns=2, **kw))
    assert out["pack_turns"] == 2 and out["val_n"] == 6 and out["stage2_final_loss"] > 0
    with pytest.raises(UserError, match="pack_turns=0: at least 1 question per row"):
        run(LlavaConfig(output_dir=str(tmp_path / "bad"), pack_turns=0, **kw))
