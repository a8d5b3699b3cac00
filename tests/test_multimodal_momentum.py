"""Momentum distillation (ALBEF/BLIP) and multi-positive contrastive targets, by hand."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.multimodal.losses import caption_targets, clip_loss, siglip_loss
from llmlab.multimodal.momentum import distilled_clip_loss, ema_update, momentum_copy


def _feats(n=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    return img, F.normalize(img + 0.8 * torch.randn(n, d, generator=g), dim=-1)


def test_ema_update_by_hand():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = momentum_copy(model)
    assert all(not p.requires_grad for p in ema.parameters())
    before = ema.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema_update(model, ema, 0.9)
    assert torch.allclose(ema.weight, 0.9 * before + 0.1 * model.weight)


def test_distilled_loss_alpha_zero_is_clip_and_by_hand():
    img, txt = _feats()
    img_m, txt_m = _feats(seed=1)
    s = torch.tensor(1 / 0.07)
    assert torch.allclose(distilled_clip_loss((img, txt, s), (img_m, txt_m, s), 0.0), clip_loss(img, txt, s), atol=1e-6)
    a = 0.4
    logits = s * img @ txt.t()
    q_i2t = (s * img_m @ txt_m.t()).softmax(1)
    q_t2i = (s * txt_m @ img_m.t()).softmax(1)
    eye = torch.eye(6)
    hand_i2t = -(((1 - a) * eye + a * q_i2t) * logits.log_softmax(1)).sum(1).mean()
    hand_t2i = -(((1 - a) * eye + a * q_t2i) * logits.t().log_softmax(1)).sum(1).mean()
    got = distilled_clip_loss((img, txt, s), (img_m, txt_m, s), a)
    assert abs(got.item() - (hand_i2t + hand_t2i).item() / 2) < 1e-5
    # a momentum model that agrees with the online one lowers the loss vs one that disagrees
    assert distilled_clip_loss((img, txt, s), (img, txt, s), a) < got


def test_caption_targets_and_multi_positive_losses():
    caps = ["a red circle", "a blue square", "a red circle", "a red circle"]
    t = caption_targets(caps)
    assert torch.allclose(t.sum(1), torch.ones(4))
    assert torch.allclose(t[0], torch.tensor([1 / 3, 0, 1 / 3, 1 / 3])) and t[1, 1] == 1
    img, txt = _feats(n=4)
    s = torch.tensor(10.0)
    logits = s * img @ txt.t()
    hand = -((t * logits.log_softmax(1)).sum(1).mean() + (t.t() * logits.t().log_softmax(1)).sum(1).mean()) / 2
    assert abs(clip_loss(img, txt, s, t).item() - hand.item()) < 1e-6
    # all-distinct captions give the plain losses back
    t_id = caption_targets(["a", "b", "c", "d"])
    assert torch.allclose(clip_loss(img, txt, s, t_id), clip_loss(img, txt, s))
    b = torch.tensor(-10.0)
    assert torch.allclose(siglip_loss(img, txt, s, b, t_id), siglip_loss(img, txt, s, b))
    z = 2 * (t > 0).float() - 1
    hand_sig = -F.logsigmoid(z * (logits + b)).sum() / 4
    assert abs(siglip_loss(img, txt, s, b, t).item() - hand_sig.item()) < 1e-5
    assert not math.isclose(siglip_loss(img, txt, s, b, t).item(), siglip_loss(img, txt, s, b).item())


def test_trainer_with_momentum_moves_the_ema_model():
    from llmlab.multimodal import data as mmdata
    from llmlab.multimodal.clip import TextConfig
    from llmlab.multimodal.train import ContrastiveConfig, ContrastiveTrainer, build_model
    from llmlab.multimodal.vit import ViTConfig
    cfg = ContrastiveConfig(max_steps=3, per_device_train_batch_size=16, momentum_alpha=0.4, momentum=0.5,
                            positives="label", vision=ViTConfig(image_size=8, patch_size=4, in_chans=1, embed_dim=16,
                                                                depth=1, num_heads=2, pool="mean"),
                            text=TextConfig(context_length=32, width=16, depth=1, num_heads=2), embed_dim=16)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 10
    ds = mmdata.ImageSet(torch.rand(64, 1, 8, 8, generator=g), labels, mmdata.DIGIT_NAMES,
                         [f"a handwritten digit {mmdata.DIGIT_NAMES[i]}" for i in labels], "digits")
    trainer = ContrastiveTrainer(model, model.tokenize, ds, cfg)
    start = trainer.ema.visual_projection.weight.clone()
    trainer.run(3)
    moved = trainer.ema.visual_projection.weight
    assert not torch.allclose(moved, start) and not torch.allclose(moved, model.visual_projection.weight)
    assert all(math.isfinite(x) for x in trainer.losses)


def test_capfilt_keeps_matches_and_drops_planted_noise():
    from llmlab.multimodal.capfilt import capfilt, corrupt_captions, filter_quality
    truth = ["a red circle", "a blue square", "a green triangle", "a red square"] * 5
    noisy, bad = corrupt_captions(truth, 0.3, seed=1)
    assert sum(bad) == 6 and all((n != t) == b for n, t, b in zip(noisy, truth, bad))
    images = torch.arange(len(truth)).float().view(-1, 1)  # image i "shows" truth[i]

    def match_prob(imgs, texts):  # an oracle filter, with one planted mistake on image 0
        return torch.tensor([float(truth[int(i)] == t or int(i) == 0) for i, t in zip(imgs[:, 0], texts)])

    def captioner(imgs):  # right except on image 1 (a wrong synthetic caption to be filtered)
        return [truth[int(i)] if int(i) != 1 else "a purple star" for i in imgs[:, 0]]
    out = capfilt(images, noisy, captioner, match_prob, batch_size=7)
    assert out["web_kept"].tolist() == [(not b) or i == 0 for i, b in enumerate(bad)]
    assert out["synthetic_kept"].tolist() == [i != 1 for i in range(len(truth))]
    assert all(truth[i] == t for i, t, _src in out["pairs"] if i != 0)
    q = filter_quality(out["web_kept"], bad)
    assert q["clean_kept"] == 1.0 and q["bad_removed"] == (5 / 6 if bad[0] else 1.0)


def test_validation_split_and_extended_templates_never_touch_eval_data():
    import random

    from llmlab.errors import UserError
    from llmlab.multimodal import data as mmdata
    from llmlab.multimodal.evaluate import DIGIT_EVAL_TEMPLATES
    from llmlab.multimodal.train import ContrastiveConfig, caption_sampler, load_split
    cfg = ContrastiveConfig(validation=100)
    train, val, full = load_split(cfg, "train"), load_split(cfg, "test"), mmdata.digits("train")
    assert len(train) + len(val) == len(full) and torch.equal(val.images, full.images[-100:])
    assert torch.equal(train.images, full.images[:-100])
    caps = caption_sampler(train, random.Random(0), "extended")(list(range(len(train))))
    heldout = {t.format(n) for t in DIGIT_EVAL_TEMPLATES for n in mmdata.DIGIT_NAMES}
    assert not heldout & set(caps) and len(set(caps)) > 100  # > 10 digits x 4 base templates
    with pytest.raises(UserError, match="validation"):
        load_split(ContrastiveConfig(validation=len(full)), "train")


def test_generic_prompts_are_unseen_in_training_and_digits_only():
    """`prompts=generic`: the held-out prompts plus generic ones, none a training caption (base or
    extended); the class embeddings average all 16; refused for easy-vqa (one clear error)."""
    from llmlab.errors import UserError
    from llmlab.multimodal import data as mmdata
    from llmlab.multimodal.evaluate import (DIGIT_EVAL_TEMPLATES, DIGIT_EXTRA_TEMPLATES, DIGIT_GENERIC_TEMPLATES,
                                            DIGIT_TRAIN_TEMPLATES, class_embeddings, zero_shot_accuracy)
    from llmlab.multimodal.train import ContrastiveConfig, build_model, evaluate_contrastive
    gen = set(DIGIT_GENERIC_TEMPLATES)
    assert len(gen) == 16 and set(DIGIT_EVAL_TEMPLATES) <= gen
    assert not gen & set(DIGIT_TRAIN_TEMPLATES + DIGIT_EXTRA_TEMPLATES)
    model = build_model(ContrastiveConfig()).eval()
    test = mmdata.digits("test").subset(40)
    got = evaluate_contrastive(model, model.tokenize, test, "generic")["zero_shot_acc"]
    assert got == zero_shot_accuracy(model, model.tokenize, test.images, test.labels, test.class_names,
                                     DIGIT_GENERIC_TEMPLATES)
    assert evaluate_contrastive(model, model.tokenize, test)["zero_shot_acc"] == zero_shot_accuracy(
        model, model.tokenize, test.images, test.labels, test.class_names, DIGIT_EVAL_TEMPLATES)
    one = class_embeddings(model, model.tokenize, ["three"], DIGIT_GENERIC_TEMPLATES)
    each = torch.stack([class_embeddings(model, model.tokenize, ["three"], [t])[0] for t in DIGIT_GENERIC_TEMPLATES])
    assert torch.allclose(one[0], torch.nn.functional.normalize(each.mean(0), dim=-1), atol=1e-6)
    with pytest.raises(UserError, match="generic for digits"):
        evaluate_contrastive(model, model.tokenize, test.__class__(test.images, test.labels, test.class_names,
                                                                   test.captions, "easy_vqa"), "generic")
