"""ViT against timm's VisionTransformer on the same random weights; positions; bad input."""
from __future__ import annotations

import pytest
import torch

from llmlab.errors import UserError
from llmlab.multimodal.vit import ViTConfig, VisionTransformer, sincos_2d


@pytest.fixture(scope="module")
def timm_vit():
    from llmlab.multimodal.reference import import_references
    try:
        import_references()
    except ImportError as e:
        pytest.skip(f"timm/open_clip not installed ({e}): pip install --no-deps timm open-clip-torch")
    from timm.models.vision_transformer import VisionTransformer as TimmViT
    return TimmViT


@pytest.mark.parametrize("pos,pool,pre_norm", [("learned", "cls", False), ("sincos", "mean", False),
                                               ("learned", "mean", True)])
def test_logits_equal_timm(timm_vit, pos, pool, pre_norm):
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=2, num_heads=4,
                    num_classes=7, pos=pos, pool=pool, pre_norm=pre_norm)
    ours = VisionTransformer(cfg).eval()
    ref = timm_vit(img_size=16, patch_size=4, in_chans=3, num_classes=7, embed_dim=32, depth=2, num_heads=4,
                   global_pool="token" if pool == "cls" else "avg", fc_norm=False, pre_norm=pre_norm).eval()
    with torch.no_grad():  # random weights everywhere, biases and norms included
        for p in ref.parameters():
            p.normal_(0, 0.3)
    state = ref.state_dict()
    if pos == "sincos":  # our fixed table is a buffer; timm carries it as its pos_embed parameter
        state.pop("pos_embed")
        with torch.no_grad():
            ref.pos_embed.copy_(ours.pos_embed)
    ours.load_state_dict(state, strict=True)
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        a, b = ours(x), ref(x)
        fa, fb = ours.forward_features(x), ref.forward_features(x)
    assert (fa - fb).abs().max().item() <= 1e-4
    assert (a - b).abs().max().item() <= 1e-4, (a - b).abs().max()


def test_sincos_table_by_hand():
    t = sincos_2d(2, 8)[0]  # dim 8: 2 frequencies per axis (1, 1/100)
    assert t.shape == (5, 8) and t[0].abs().sum() == 0
    # patch (row 1, col 0) is index 1 + 2 = 3: x = 0, y = 1
    y = torch.tensor([1.0 * 1, 1.0 / 100])
    expect = torch.cat([torch.zeros(2).sin(), torch.zeros(2).cos(), y.sin(), y.cos()])
    assert torch.allclose(t[3], expect, atol=1e-6)


def test_bad_shapes_and_configs():
    m = VisionTransformer(ViTConfig(image_size=8, patch_size=4, in_chans=1, embed_dim=16, depth=1, num_heads=2))
    with pytest.raises(UserError, match="do not fit"):
        m(torch.zeros(1, 3, 8, 8))
    with pytest.raises(UserError, match="multiple of patch_size"):
        ViTConfig(image_size=10, patch_size=4).validate()
    with pytest.raises(UserError, match="divisible by num_heads"):
        ViTConfig(embed_dim=30, num_heads=4).validate()


def test_feature_layers_equal_timm_intermediates(timm_vit):
    """`forward_features(x, layer)` counts like HF's hidden_states: -2 is the penultimate block's output
    (LLaVA-1.5's vision_feature_layer), checked against timm's intermediates of the same weights."""
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=3, num_heads=4, pool="mean")
    ours = VisionTransformer(cfg).eval()
    ref = timm_vit(img_size=16, patch_size=4, in_chans=3, num_classes=0, embed_dim=32, depth=3, num_heads=4,
                   global_pool="avg", fc_norm=False).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        inter = ref.forward_intermediates(x, indices=[0, 1, 2], norm=False, output_fmt="NLC", intermediates_only=True,
                                          return_prefix_tokens=True)
        for layer, block in ((1, 0), (-2, 1), (2, 1), (3, 2)):
            got = ours.forward_features(x, layer)
            patches, cls = inter[block]
            want = torch.cat([cls, patches], 1)
            if layer == 3:  # the last layer carries the final LN, as forward_features always did
                want = ref.norm(want)
            assert (got - want).abs().max().item() <= 1e-4, layer
        assert torch.equal(ours.forward_features(x, -1), ours.forward_features(x))
        assert torch.equal(ours.forward_features(x, -4), ours.forward_features(x, 0))
    with pytest.raises(UserError, match="outside -4..3"):
        ours.forward_features(x, 4)
