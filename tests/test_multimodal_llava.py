"""LLaVA-style model: the LM run from embeddings equals its token forward; the image tokens sit
where `<image>` was; labels cover the answer only; greedy answers equal step-by-step argmax;
training lowers the loss. A tiny LM with SmolLM2's tokenizer (vocabulary and chat template)."""
from __future__ import annotations

import pytest
import torch

from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.multimodal.llava import Llava, lm_hidden_from_embeds
from llmlab.multimodal.vit import ViTConfig, VisionTransformer


@pytest.fixture(scope="module")
def llava(smollm2_tokenizer):
    torch.manual_seed(0)
    lm = Transformer(ModelConfig(vocab_size=smollm2_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)).eval()
    for p in lm.parameters():
        p.requires_grad_(False)
    vit = VisionTransformer(ViTConfig(image_size=8, patch_size=4, in_chans=3, embed_dim=16, depth=1, num_heads=2))
    return Llava(vit, lm, smollm2_tokenizer)


def test_embeds_forward_equals_token_forward(llava):
    ids = torch.tensor([[5, 17, 300, 4000, 9]])
    with torch.no_grad():
        ref = llava.lm(ids)
        got = llava.lm.lm_head(lm_hidden_from_embeds(llava.lm, llava.lm.model.embed_tokens(ids)))
    assert torch.allclose(got, ref, atol=1e-5)


def test_layout_and_labels(llava):
    tok = llava.tok
    images = torch.rand(2, 3, 8, 8)
    x, y, plen = llava._batch(images, ["what color is the shape?", "is there a circle?"], ["red", "no"])
    n_img = 4  # (8 / 4)^2 patches
    emb = llava.lm.model.embed_tokens.weight
    before = llava._before
    # rows start with the chat prefix, then the projected image tokens
    assert torch.allclose(x[0, :len(before)], emb[before])
    assert torch.allclose(x[0, len(before):len(before) + n_img], llava.image_tokens(images)[0])
    # the answer tokens (and <|im_end|>) are the only labels
    want = tok.encode("red") + tok.encode("<|im_end|>")
    assert y[0][y[0] != -100].tolist() == want
    assert plen[0] + len(want) == int((y[0] != -100).nonzero().max()) + 2
    rendered = tok.apply_chat_template([{"role": "system", "content": "Answer in one word."},
                                        {"role": "user", "content": "<image>\nis there a circle?"}])
    text_ids = tok.encode(rendered.split("<image>")[1])
    after = x[1, len(before) + n_img:plen[1]]
    assert torch.allclose(after, emb[text_ids])


def test_greedy_answer_matches_stepwise_argmax(llava):
    images = torch.rand(1, 3, 8, 8)
    got = llava.answer(images, ["what shape is present?"], max_new_tokens=3)
    x, _, plen = llava._batch(images, ["what shape is present?"])
    ids = []
    with torch.no_grad():
        for _ in range(3):
            t = llava.lm.lm_head(lm_hidden_from_embeds(llava.lm, x))[0, -1].argmax().item()
            if t in llava.end_id:
                break
            ids.append(t)
            x = torch.cat([x, llava.lm.model.embed_tokens.weight[t].view(1, 1, -1)], dim=1)
    assert got == [llava.tok.decode(ids).strip()]


def test_shared_prefix_is_exact(smollm2_tokenizer):
    """The chat prefix run once (batch 1) gives the full rows' hidden states, loss and gradients
    (projector, LoRA and an unfrozen encoder) and the same greedy answers as running every row whole."""
    from llmlab.finetune.lora import LoraConfig, apply_lora
    torch.manual_seed(3)
    lm = Transformer(ModelConfig(vocab_size=smollm2_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))
    lm.requires_grad_(False)
    vit = VisionTransformer(ViTConfig(image_size=8, patch_size=4, in_chans=3, embed_dim=16, depth=1, num_heads=2))
    m = Llava(vit, lm, smollm2_tokenizer)
    assert m.share_prefix
    apply_lora(m.lm, LoraConfig(r=4, lora_alpha=8))
    for p in m.lm.parameters():
        if p.requires_grad:  # LoRA's B starts at 0: move it so its gradient path is not trivial
            p.data.add_(0.05 * torch.randn_like(p))
    m.vision.requires_grad_(True)
    images, qs, ans = torch.rand(3, 3, 8, 8), ["what color?", "is there a red circle?", "shape?"], ["red", "no", "circle"]
    x, _, _ = m._batch(images, qs, ans)
    P = len(m._before)
    with torch.no_grad():
        full = lm_hidden_from_embeds(m.lm, x)
        part = lm_hidden_from_embeds(m.lm, x[:, P:], x[:1, :P])
    assert torch.allclose(part, full[:, P:], atol=1e-5)
    runs = []
    for share in (False, True):
        m.share_prefix = share
        m.zero_grad(set_to_none=True)
        loss = m.loss(images, qs, ans)
        loss.backward()
        grads = [p.grad.clone() for p in m.parameters() if p.requires_grad]
        runs.append((loss.item(), grads, m.answer(images, qs, max_new_tokens=3)))
    m.share_prefix = True
    assert runs[0][0] == pytest.approx(runs[1][0], abs=1e-5)
    assert len(runs[0][1]) > 10 and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(runs[0][1], runs[1][1]))
    assert runs[0][2] == runs[1][2]


def test_projector_learns(llava):
    torch.manual_seed(1)
    images = torch.rand(4, 3, 8, 8)
    qs, ans = ["what color?"] * 4, ["red", "blue", "red", "blue"]
    opt = torch.optim.Adam(llava.projector.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):  # the gradient reaches the projector through the frozen LM, and only it
        loss = llava.loss(images, qs, ans)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in llava.projector.parameters())
        opt.step()
    assert losses[-1] < losses[0] - 1e-3, losses
    assert all(p.grad is None for p in llava.vision.parameters())
    assert all(p.grad is None for p in llava.lm.parameters())


def test_unfrozen_vision_gets_gradients_and_frozen_does_not(llava):
    images = torch.rand(2, 3, 8, 8)
    llava.vision.requires_grad_(True)
    try:
        llava.loss(images, ["what shape?"] * 2, ["circle", "triangle"]).backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in llava.vision.patch_embed.parameters())
    finally:
        llava.vision.requires_grad_(False)
        llava.zero_grad(set_to_none=True)
    with torch.no_grad():
        tokens = llava.image_tokens(images)
    assert not tokens.requires_grad


def test_vqa_accuracy_per_answer_type_by_hand():
    from llmlab.multimodal.data import ImageSet
    from llmlab.multimodal.llava_train import answer_type, evaluate_vqa

    class Stub(torch.nn.Module):  # right on colours, wrong on shapes, "yes" to every yes/no question
        def answer(self, images, questions):
            return [{"c": "Red", "s": "circle", "y": "yes"}[q[0]] for q in questions]

    qa = [[("c?", "red"), ("s?", "triangle"), ("y?", "yes")], [("c?", "red"), ("y?", "no"), ("y?", "yes")]]
    ds = ImageSet(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long), ["x"], ["", ""], "easy_vqa", qa)
    out = evaluate_vqa(Stub(), ds, limit=0, seed=0, batch=4)
    assert [answer_type(a) for a in ("teal", "rectangle", "no")] == ["color", "shape", "yes_no"]
    assert out == pytest.approx({"vqa_acc": 4 / 6, "n": 6, "acc_color": 1.0, "n_color": 2, "acc_shape": 0.0,
                                 "n_shape": 1, "acc_yes_no": 0.6667, "n_yes_no": 3,
                                 "yes_share": 1.0, "yes_share_true": 0.6667}, abs=1e-4)


def test_vision_feature_layer_picks_the_patch_tokens(llava):
    """feature_layer=0 feeds the projector the patch embeddings (before any block), -1 the final-LN output."""
    images = torch.rand(2, 3, 8, 8)
    emb = llava.vision.norm_pre(torch.cat([llava.vision.cls_token.expand(2, -1, -1), llava.vision.patch_embed(images)], 1)
                                + llava.vision.pos_embed)
    with torch.no_grad():
        final = llava.image_tokens(images)
        llava.feature_layer = 0
        try:
            first = llava.image_tokens(images)
        finally:
            llava.feature_layer = -1
        assert torch.allclose(first, llava.projector(emb[:, 1:]), atol=1e-6)
        assert torch.allclose(final, llava.projector(llava.vision.norm(llava.vision.blocks[0](emb))[:, 1:]), atol=1e-6)
        assert not torch.allclose(first, final, atol=1e-3)


def test_bad_vision_feature_layer_is_one_clear_line(tmp_path):
    from llmlab.errors import UserError
    from llmlab.multimodal.llava_train import LlavaConfig, build
    from llmlab.multimodal.runs import save_contrastive
    from llmlab.multimodal.train import ContrastiveConfig, build_model
    cfg = ContrastiveConfig(dataset="easy_vqa", vision=ViTConfig(image_size=8, patch_size=4, embed_dim=16, depth=2,
                                                                 num_heads=2))
    save_contrastive(build_model(cfg), cfg, {}, str(tmp_path / "enc"))
    with pytest.raises(UserError, match="outside -3..2 for the 2-block encoder"):
        build(LlavaConfig(vision_run=str(tmp_path / "enc"), vision_feature_layer=-4))


def _fake_easy_vqa(split: str, size: int = 32, limit: int = 0):
    """A few random easy-vqa-like images with questions (no PNGs read): test differs from train."""
    from llmlab.multimodal.data import ImageSet
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    n = 24 if split == "train" else 10
    qa = [[("what color is the shape?", "red"), ("is there a circle?", "yes")] for _ in range(n)]
    return ImageSet(torch.rand(n, 3, size, size, generator=g), torch.zeros(n, dtype=torch.long),
                    ["circle", "rectangle", "triangle"], ["a red circle"] * n, "easy_vqa", qa)


def test_test_split_scored_only_on_request_and_reloaded_run_scores_it_alike(tmp_path, monkeypatch):
    """With validation=N the run reads only validation; `score_test=true` or `mm eval` on the saved
    run reads test, and both give the same figures (the same questions, the same weights)."""
    from tests.tiny_mm_model import save_tiny_llava
    from llmlab.multimodal import data as mmdata
    from llmlab.multimodal.commands import EvalConfig, run_eval
    from llmlab.multimodal.llava_train import LlavaConfig, evaluate_run, run
    monkeypatch.setattr(mmdata, "easy_vqa", _fake_easy_vqa)
    root = save_tiny_llava(tmp_path)
    kw = dict(lm=str(root.parent / "lm"), vision_run=str(root.parent / "clip"), stage1_steps=1, stage2_steps=2,
              per_device_train_batch_size=2, lora_r=2, validation=8, eval_limit=6)
    chose = run(LlavaConfig(output_dir=str(tmp_path / "val_only"), **kw))
    assert "vqa_val_acc" in chose and chose["val_n"] == 6 and "vqa_acc" not in chose
    both = run(LlavaConfig(output_dir=str(tmp_path / "both"), score_test=True, **kw))
    assert both["vqa_val_acc"] == chose["vqa_val_acc"] and both["n"] == 6
    again = evaluate_run(str(tmp_path / "both"))
    assert again == {k: both[k] for k in again}
    assert evaluate_run(str(tmp_path / "val_only")) == again  # seeded: the same weights either way
    assert run_eval(EvalConfig(run_dir=str(tmp_path / "both"))) == 0


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_lr_schedule_per_step_and_per_group(schedule, monkeypatch):
    """`lr_schedule=cosine`: each stage warms up over 3 % of its steps and decays to 0 along a cosine,
    every param group from its own peak (the encoder's rate stays 10x below); constant keeps the rates."""
    import math
    import random
    from llmlab.multimodal.llava_train import LlavaConfig, _steps
    seen = []
    step_fn = torch.optim.AdamW.step

    def spy(opt, *a, **k):
        seen.append([g["lr"] for g in opt.param_groups])
        return step_fn(opt, *a, **k)
    monkeypatch.setattr(torch.optim.AdamW, "step", spy)

    class Stub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))

        def loss(self, images, questions, answers):
            return (self.a ** 2).sum() + (self.b ** 2).sum()
    m, steps = Stub(), 100
    cfg = LlavaConfig(learning_rate=1e-3, lr_schedule=schedule, per_device_train_batch_size=2)
    groups = [{"params": [m.a]}, {"params": [m.b], "lr": 1e-4}]
    _steps(m, groups, [(0, "q", "a")], torch.zeros(1, 3, 4, 4), steps, cfg, random.Random(0), "t")
    assert len(seen) == steps
    if schedule == "constant":
        assert all(lrs == [1e-3, 1e-4] for lrs in seen)
        return
    warm = 3  # round(0.03 * 100)
    assert seen[0] == pytest.approx([1e-3 / warm, 1e-4 / warm]) and seen[warm - 1] == pytest.approx([1e-3, 1e-4])
    mid = warm + (steps - warm) // 2  # halfway through the decay: half the peak
    want = 0.5 * (1 + math.cos(math.pi * (mid - warm) / (steps - warm)))
    assert seen[mid] == pytest.approx([1e-3 * want, 1e-4 * want])
    assert seen[-1][0] < 1e-3 * 1e-3 and seen[-1][1] == pytest.approx(seen[-1][0] / 10)
    assert all(x[0] >= y[0] for x, y in zip(seen[warm - 1:], seen[warm:]))  # monotone after warm-up


def test_bad_lr_schedule_is_one_clear_line():
    from llmlab.errors import UserError
    from llmlab.multimodal.llava_train import LlavaConfig, run
    with pytest.raises(UserError, match="lr_schedule='linear': use constant or cosine"):
        run(LlavaConfig(lr_schedule="linear"))
