"""CLIP/SigLIP losses against open_clip on the same features; the chunked SigLIP ring on 2 gloo
processes against one process (loss and gradients); temperature clamp; zero-shot and recall by hand."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmlab.distributed.launch import spawn
from llmlab.multimodal.clip import CLIP, ClipConfig, TextConfig
from llmlab.multimodal.evaluate import recall_at_k, zero_shot_accuracy
from llmlab.multimodal.losses import clip_loss, siglip_loss, siglip_loss_ring
from llmlab.multimodal.vit import ViTConfig


@pytest.fixture(scope="module")
def open_clip():
    from llmlab.multimodal.reference import open_clip_losses
    try:
        return open_clip_losses()
    except ImportError as e:
        pytest.skip(f"open_clip not installed ({e}): pip install --no-deps open-clip-torch timm")


def _features(n=12, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt = F.normalize(img + 0.7 * torch.randn(n, d, generator=g), dim=-1)
    return img, txt


def test_clip_loss_equals_open_clip(open_clip):
    img, txt = _features()
    scale = torch.tensor(math.log(1 / 0.07)).exp()
    ours, ref = clip_loss(img, txt, scale), open_clip.ClipLoss()(img, txt, scale)
    assert abs(ours.item() - ref.item()) <= 1e-6
    # and by hand: mean over both directions of -log softmax on the diagonal
    logits = scale * img @ txt.t()
    hand = -(logits.log_softmax(1).diagonal().mean() + logits.log_softmax(0).diagonal().mean()) / 2
    assert abs(ours.item() - hand.item()) <= 1e-6


def test_siglip_loss_equals_open_clip(open_clip):
    img, txt = _features()
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    ours = siglip_loss(img, txt, scale, bias)
    ref = open_clip.SigLipLoss()(img, txt, scale, bias)
    assert abs(ours.item() - ref.item()) <= 1e-5, (ours, ref)


def _ring_worker(img, txt, scale, bias):
    import torch.distributed as dist
    rank, world = dist.get_rank(), dist.get_world_size()
    n = len(img) // world
    i = img[rank * n:(rank + 1) * n].clone().requires_grad_()
    t = txt[rank * n:(rank + 1) * n].clone().requires_grad_()
    s, b = scale.clone().requires_grad_(), bias.clone().requires_grad_()
    loss = siglip_loss_ring(i, t, s, b)
    loss.backward()
    return loss.item(), i.grad, t.grad, s.grad.item(), b.grad.item()


@pytest.mark.slow  # ~25 s under load: two spawned processes each import torch
def test_siglip_ring_on_two_processes_equals_one():
    img, txt = _features(n=8, d=16, seed=1)
    scale, bias = torch.tensor(7.0), torch.tensor(-3.0)
    ranks = spawn(_ring_worker, 2, img, txt, scale, bias)
    i, t, s, b = img.clone().requires_grad_(), txt.clone().requires_grad_(), scale.clone().requires_grad_(), \
        bias.clone().requires_grad_()
    full = siglip_loss(i, t, s, b)
    full.backward()
    assert abs(sum(r[0] for r in ranks) - full.item()) <= 1e-5
    assert torch.allclose(torch.cat([r[1] for r in ranks]), i.grad, atol=1e-6)
    assert torch.allclose(torch.cat([r[2] for r in ranks]), t.grad, atol=1e-6)
    assert abs(sum(r[3] for r in ranks) - s.grad.item()) <= 1e-5
    assert abs(sum(r[4] for r in ranks) - b.grad.item()) <= 1e-5


def _tiny(loss="clip"):
    torch.manual_seed(0)
    return CLIP(ClipConfig(vision=ViTConfig(image_size=8, patch_size=4, in_chans=1, embed_dim=16, depth=1, num_heads=2),
                           text=TextConfig(context_length=16, width=16, depth=1, num_heads=2), embed_dim=8, loss=loss))


def test_init_and_temperature_clamp():
    clip, sig = _tiny("clip"), _tiny("siglip")
    assert abs(clip.logit_scale.item() - math.log(1 / 0.07)) < 1e-6 and clip.logit_bias is None
    assert abs(sig.logit_scale.item() - math.log(10)) < 1e-6 and sig.logit_bias.item() == -10.0
    with torch.no_grad():
        clip.logit_scale.fill_(10.0)  # exp(10) would be 22026: CLIP clamps the scale at 100
    out = clip(torch.rand(2, 1, 8, 8), clip.tokenize(["a", "b"]))
    assert abs(out[2].item() - 100.0) < 1e-3 and len(out) == 3
    assert len(sig(torch.rand(2, 1, 8, 8), sig.tokenize(["a", "b"]))) == 4


def test_recall_at_k_by_hand():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.5, 0.0], [0.1, 0.2, 0.3]])
    r = recall_at_k(sim, ks=(1, 2))
    # image 1's true text (0.5) is beaten by text 0 (0.8): rank 1
    assert r["i2t_r@1"] == pytest.approx(2 / 3) and r["i2t_r@2"] == 1.0
    # text 0 -> images: 0.9 best, ok; text 1 -> 0.5 best; text 2 -> 0.3 best
    assert r["t2i_r@1"] == 1.0
    # same-caption groups: image 1 retrieving text 0 counts when both carry the same caption
    assert recall_at_k(sim, ks=(1,), groups=torch.tensor([0, 0, 1]))["i2t_r@1"] == 1.0


def test_zero_shot_prompt_ensemble_by_hand():
    class Fake:  # images are one-hot class vectors; prompts embed the class name's index
        def encode_image(self, x, normalize=True):
            return F.normalize(x, dim=-1)

        def encode_text(self, ids, normalize=True):
            return F.normalize(ids, dim=-1)

    names = ["a", "b"]

    def tokenize(texts):  # "x {name}" / "y {name}": both templates point at the class, one noisily
        return torch.tensor([[1.0, 0.2] if t.endswith("a") else [0.2, 1.0] for t in texts])
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    labels = torch.tensor([0, 1, 1])
    assert zero_shot_accuracy(Fake(), tokenize, images, labels, names, ["x {}", "y {}"]) == pytest.approx(2 / 3)



def test_prompt_ensemble_chosen_on_validation_by_hand():
    from llmlab.multimodal.evaluate import choose_templates

    class Fake:
        def encode_image(self, x, normalize=True):
            return F.normalize(x, dim=-1)

        def encode_text(self, ids, normalize=True):
            return F.normalize(ids, dim=-1)

    def tokenize(texts):  # "good {}" points at its class; "bad {}" points at the other one
        return torch.tensor([[1.0, 0.0] if t.endswith("a") == t.startswith("good") else [0.0, 1.0] for t in texts])
    images, labels = torch.tensor([[1.0, 0.1], [0.1, 1.0], [-5.0, -5.0]]), torch.tensor([0, 1, -1])
    chosen, acc = choose_templates(Fake(), tokenize, images, labels, ["a", "b"], ["bad {}", "bad2 {}", "good {}"])
    assert chosen == ["good {}"] and acc == 1.0  # the full ensemble is outvoted by the two bad prompts
    chosen, acc = choose_templates(Fake(), tokenize, images, labels, ["a", "b"], ["bad {}", "good {}", "good2 {}"])
    assert chosen == ["bad {}", "good {}", "good2 {}"] and acc == 1.0  # ties at 1.0: the larger ensemble wins
    assert zero_shot_accuracy(Fake(), tokenize, images, labels, ["a", "b"], ["bad {}"]) == 0.0

def test_towers_equal_open_clip_on_the_same_weights():
    """The benchmark's like-for-like claim: with `pre_norm=True` our image and text towers compute
    open_clip's CLIP exactly (random weights everywhere, norms and biases included)."""
    from llmlab.multimodal.reference import import_references, open_clip_to_ours
    try:
        _timm, oc = import_references()
    except ImportError as e:
        pytest.skip(f"open_clip not installed ({e})")
    torch.manual_seed(0)
    peer = oc.CLIP(embed_dim=16, vision_cfg=dict(image_size=8, patch_size=2, width=32, layers=2, head_width=8,
                                                 mlp_ratio=4.0, pool_type="avg"),
                   text_cfg=dict(context_length=12, vocab_size=257, width=32, heads=4, layers=2)).eval()
    with torch.no_grad():
        for p in peer.parameters():
            p.normal_(0, 0.3)
    ours = CLIP(ClipConfig(vision=ViTConfig(image_size=8, patch_size=2, in_chans=3, embed_dim=32, depth=2,
                                            num_heads=4, pool="mean", pre_norm=True),
                           text=TextConfig(context_length=12, width=32, depth=2, num_heads=4), embed_dim=16)).eval()
    ours.load_state_dict(open_clip_to_ours(peer.state_dict(), 2), strict=True)
    images, ids = torch.randn(3, 3, 8, 8), ours.tokenize(["a 3", "the digit seven", "x"])
    with torch.no_grad():
        for a, b in ((ours.encode_image(images, False), peer.encode_image(images)),
                     (ours.encode_text(ids, False), peer.encode_text(ids))):
            assert (a - b).abs().max().item() <= 1e-4 * b.abs().max().item(), (a - b).abs().max()
    no_ln_pre = CLIP(ClipConfig(vision=ViTConfig(image_size=8, patch_size=2, in_chans=3, embed_dim=32, depth=2,
                                                 num_heads=4, pool="mean"), embed_dim=16))
    assert "visual.norm_pre.weight" not in no_ln_pre.state_dict()  # the default stays timm's plain ViT


def _bench_sized(seed=0, **vision):
    torch.manual_seed(seed)
    return CLIP(ClipConfig(vision=ViTConfig(image_size=8, patch_size=2, in_chans=3, embed_dim=64, depth=2, num_heads=4,
                                            pool="mean", pre_norm=True, **vision),
                           text=TextConfig(context_length=48, width=64, depth=2, num_heads=4), embed_dim=64))


def test_biases_are_drawn_as_open_clip_draws_them():
    """Session 15's init (chosen on validation digits, docs/LOG.md): text MLP biases ~ U(+-1/sqrt(fan_in))
    as nn.Linear's default, image attention output biases zero; the other biases as before. With
    open_clip installed: the same linear biases are zero on both sides, at the benchmark's size."""
    ours = _bench_sized()
    for blk in ours.visual.blocks:
        assert not blk.attn.proj.bias.any() and not blk.attn.qkv.bias.any()
        for lin in (blk.mlp.fc1, blk.mlp.fc2):  # nn.Linear's default, as before
            assert 0.5 < lin.bias.abs().max() * lin.in_features ** 0.5 <= 1
    for name in ("fc1", "fc2"):
        lins = [getattr(blk.mlp, name) for blk in ours.text.blocks]
        bound = lins[0].in_features ** -0.5
        b = torch.cat([lin.bias for lin in lins])
        assert b.abs().max() <= bound and b.abs().max() > 0.9 * bound and abs(b.mean()) < 0.2 * bound
        assert 0.8 < b.std().item() / (bound / 3 ** 0.5) < 1.2  # U(-a, a) has sd a / sqrt(3)
    for blk in ours.text.blocks:
        assert not blk.attn.qkv.bias.any() and not blk.attn.proj.bias.any()
    try:
        from llmlab.multimodal.reference import import_references, open_clip_to_ours
        _timm, oc = import_references()
    except ImportError:
        return
    torch.manual_seed(0)
    peer = oc.CLIP(embed_dim=64, vision_cfg=dict(image_size=8, patch_size=2, width=64, layers=2, head_width=16,
                                                 mlp_ratio=4.0, pool_type="avg"),
                   text_cfg=dict(context_length=48, vocab_size=257, width=64, heads=4, layers=2))
    theirs = open_clip_to_ours(peer.state_dict(), 2)
    zero = {sd_name: {k for k, v in sd.items() if k.endswith("bias") and "norm" not in k and "ln_" not in k
                      and not v.any()} for sd_name, sd in (("ours", ours.state_dict()), ("peer", theirs))}
    assert zero["ours"] == zero["peer"] and len(zero["ours"]) == 8, zero


def _ks(x: torch.Tensor, y: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    x, y = x.sort().values, y.sort().values
    grid = torch.cat([x, y])
    return (torch.searchsorted(x, grid, right=True) / len(x) - torch.searchsorted(y, grid, right=True) / len(y)).abs().max().item()


def test_text_positions_start_as_sincos():
    """Our one deliberate init difference from open_clip (session 16, chosen on validation digits with
    unseen prompts): the text position table starts as the 1-D sin-cos table (Vaswani et al. 2017:
    sin(p w_i), cos(p w_i), w_i = 10000^(-2i/d)) rescaled to std 0.02, and stays learned."""
    from llmlab.multimodal.clip import sincos_1d
    t = sincos_1d(48, 64)
    assert abs(float(t[3, 0]) - math.sin(3.0)) < 1e-6 and abs(float(t[5, 33]) - math.cos(5 * 10000 ** (-2 / 64))) < 1e-6
    assert abs(float(t[7, 31]) - math.sin(7 * 10000 ** (-62 / 64))) < 1e-6
    pe = _bench_sized(0).text.positional_embedding
    assert pe.requires_grad and torch.allclose(pe, t / t.std() * 0.02) and abs(float(pe.std()) - 0.02) < 1e-6


def test_every_init_tensor_follows_open_clips_distribution():
    """Each library's own init (the benchmark's `clip_zero_shot` protocol): pooled over 4 seeds, every
    one of the 62 tensors of our CLIP's init but the text position table (ours since session 16) passes a two-sample KS test against open_clip's tensor at
    the benchmark's size (level 1e-4 per tensor, under 1 % for all 62; a zero tensor against a drawn one
    gives KS >= 0.5). Session 14's init fails it (its text MLP biases were zero)."""
    try:
        from llmlab.multimodal.reference import import_references, open_clip_to_ours
        _timm, oc = import_references()
    except ImportError as e:
        pytest.skip(f"open_clip not installed ({e})")
    pools: dict[str, tuple[list, list]] = {}
    for seed in range(4):
        ours = _bench_sized(seed).state_dict()
        torch.manual_seed(seed + 100)  # other draws than ours (with the same seed both draw the patch conv first)
        peer = oc.CLIP(embed_dim=64, vision_cfg=dict(image_size=8, patch_size=2, width=64, layers=2, head_width=16,
                                                     mlp_ratio=4.0, pool_type="avg"),
                       text_cfg=dict(context_length=48, vocab_size=257, width=64, heads=4, layers=2))
        theirs = open_clip_to_ours(peer.state_dict(), 2)
        for k, v in ours.items():
            a, b = pools.setdefault(k, ([], []))
            a.append(v.flatten().float())
            b.append(theirs[k].flatten().float())
    assert len(pools) == 62
    for k, (a, b) in pools.items():
        if k == "text.positional_embedding":  # deliberately ours (session 16): test_text_positions_start_as_sincos
            continue
        a, b = torch.cat(a), torch.cat(b)
        assert _ks(a, b) <= 2.23 * (2 / len(a)) ** 0.5, k
