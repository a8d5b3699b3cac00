"""Held-out compositional scene captions (llmlab/multimodal/compose.py), checked with stub encoders
whose answers are known by construction."""
import torch
import torch.nn.functional as F

from llmlab.multimodal import data as mmdata
from llmlab.multimodal.compose import (INVERSE, canonical, caption_space, colour_swapped, parse,
                                       scene_caption_metrics)


def test_parse_and_canonical_by_hand():
    assert parse("a red circle left of a blue square") == (("red", "circle"), "left of", ("blue", "square"))
    assert parse("a green triangle above a green square") == (("green", "triangle"), "above", ("green", "square"))
    assert canonical("a red circle left of a blue square") == canonical("a blue square right of a red circle")
    assert canonical("a red circle left of a blue square") != canonical("a red circle right of a blue square")
    assert canonical("a red circle above a blue square") == canonical("a blue square below a red circle")
    assert colour_swapped("a red circle left of a blue square") == "a blue circle left of a red square"
    assert colour_swapped("a red circle left of a red square") is None  # same colour: nothing to bind


def test_caption_space_holds_every_generated_caption():
    space = caption_space()
    assert len(space) == len(set(space)) == 18 * 17 * 4
    assert len({canonical(c) for c in space}) == len(space) // 2  # each scene has exactly two captions
    for split in ("train", "test"):
        caps = mmdata.scenes(split, n=200, seed=3).captions
        assert set(caps) <= set(space)
        held = [any(f"{c} {s}" in cap for c, s in mmdata.HELD_OUT_COMBOS) for cap in caps]
        assert all(held) if split == "test" else not any(held)


class _Stub:
    """Images are row indices into `answers`; the image embedding is the one-hot of the scene that
    answers[i] describes, a text embedding the one-hot of its own scene: the model 'sees' answers[i]."""

    def __init__(self, answers):
        self.keys = {k: i for i, k in enumerate(sorted({canonical(c) for c in caption_space()}))}
        self.answers = answers

    def onehot(self, caps):
        return F.one_hot(torch.tensor([self.keys[canonical(c)] for c in caps]), len(self.keys)).float()

    def encode_image(self, x, normalize=True):
        return self.onehot([self.answers[i] for i in x[:, 0].long().tolist()])

    def encode_text(self, texts, normalize=True):
        return self.onehot(texts)


def _score(truth, seen):
    stub = _Stub(seen)
    return scene_caption_metrics(stub, lambda t: t, torch.arange(len(truth)).float()[:, None], truth)


def test_metrics_reward_only_what_the_model_gets_right():
    truth = ["a red circle left of a blue square", "a green triangle above a white circle",
             "a yellow square below a purple triangle"]
    perfect = _score(truth, truth)
    assert perfect == {"caption_acc": 1.0, "objects_acc": 1.0, "relation_acc": 1.0, "binding_acc": 1.0,
                       "held_out_object_recall": 1.0, "trained_object_recall": 1.0}
    swapped_order = _score(truth, ["a blue square right of a red circle", *truth[1:]])  # same scene, other wording
    assert swapped_order == perfect
    colours = _score(truth, [colour_swapped(c) for c in truth])  # binds the colours to the wrong shapes
    assert colours["caption_acc"] == 0 and colours["binding_acc"] == 0 and colours["objects_acc"] == 0
    rels = []
    for c in truth:
        o0, rel, o1 = parse(c)
        rels.append(f"a {o0[0]} {o0[1]} {INVERSE[rel]} a {o1[0]} {o1[1]}")  # right objects, wrong relation
    wrong_rel = _score(truth, rels)
    assert wrong_rel["caption_acc"] == 0 and wrong_rel["objects_acc"] == 1 and wrong_rel["relation_acc"] == 0
    assert wrong_rel["binding_acc"] == 0  # true and swapped captions tie at 0: a tie counts against the model


def test_object_recall_splits_held_out_from_seen_objects():
    truth = ["a red circle left of a blue square", "a yellow square above a green circle"]  # one held-out each
    # the model names the seen object but turns each held-out pair into a seen one
    seen_only = ["a red square left of a blue square", "a yellow triangle above a green circle"]
    m = _score(truth, seen_only)
    assert m["held_out_object_recall"] == 0 and m["trained_object_recall"] == 1 and m["caption_acc"] == 0
    m = _score(truth, [truth[0], seen_only[1]])
    assert m["held_out_object_recall"] == 0.5 and m["trained_object_recall"] == 1 and m["caption_acc"] == 0.5


def test_scene_runs_report_held_out_and_control_metrics():
    """`llmlab mm train dataset=scenes` scores the held-out test scenes and, as the control, fresh
    scenes of trained pairs (no held-out object there, so no held-out recall)."""
    from llmlab.multimodal.clip import TextConfig
    from llmlab.multimodal.train import ContrastiveConfig, build_model, evaluate_contrastive
    from llmlab.multimodal.vit import ViTConfig
    torch.set_num_threads(1)
    cfg = ContrastiveConfig(dataset="scenes", vision=ViTConfig(image_size=32, patch_size=8, in_chans=3, embed_dim=16,
                                                               depth=1, num_heads=2, pool="mean"),
                            text=TextConfig(context_length=48, width=16, depth=1, num_heads=2), embed_dim=16)
    model = build_model(cfg)
    test = mmdata.scenes("test", n=40, seed=0)
    m = evaluate_contrastive(model, model.tokenize, test)
    for k in ("caption_acc", "objects_acc", "relation_acc", "binding_acc", "trained_object_recall"):
        assert 0 <= m[k] <= 1 and 0 <= m[f"control_{k}"] <= 1
    assert 0 <= m["held_out_object_recall"] <= 1 and "control_held_out_object_recall" not in m
