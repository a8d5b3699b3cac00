"""Qwen2-VL dynamic resolution against transformers: smart_resize, the image processor's packed
pixel values and grids, and the vision tower's merged tokens on the same random weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from llmlab.errors import UserError
from llmlab.multimodal.dynres import DynamicViT, DynamicViTConfig, patchify, preprocess, smart_resize

qwen = pytest.importorskip("transformers.models.qwen2_vl.modeling_qwen2_vl")


def _images():
    from PIL import Image
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((37, 61), (16, 16), (50, 20))]


@pytest.mark.parametrize("hw", [(37, 61), (16, 16), (50, 20), (1000, 30), (3, 600), (480, 640)])
def test_smart_resize_equals_transformers(hw):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as ref
    for kw in ({}, {"factor": 8, "min_pixels": 16 * 16, "max_pixels": 40 * 40}):
        assert smart_resize(*hw, **kw) == ref(*hw, **kw)
    h, w = smart_resize(*hw, factor=8, min_pixels=256, max_pixels=1600)
    assert h % 8 == 0 and w % 8 == 0 and h * w >= 256
    assert h * w <= 1600 or min(h, w) == 8  # a very thin image keeps one row of 8 px (as transformers)


def test_preprocess_equals_qwen2vl_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    ims = _images()
    proc = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2,
                                    size={"shortest_edge": 16 * 16, "longest_edge": 40 * 40})
    ref = proc(ims, return_tensors="pt")
    px, grid = preprocess(ims, patch=4, merge=2, temporal=2, min_pixels=16 * 16, max_pixels=40 * 40)
    assert grid.tolist() == ref["image_grid_thw"].tolist()
    assert len({tuple(g) for g in grid.tolist()}) == 3  # three different token counts
    assert torch.allclose(px, ref["pixel_values"].float(), atol=2e-2)  # bicubic rounding: within 1/255/std
    assert (px - ref["pixel_values"]).abs().mean() < 1e-3


def test_vision_tower_equals_transformers():
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
    torch.manual_seed(0)
    hf_cfg = Qwen2VLVisionConfig(depth=2, embed_dim=32, num_heads=4, hidden_size=48, mlp_ratio=2, patch_size=4,
                                 spatial_merge_size=2, temporal_patch_size=2, in_channels=3, hidden_act="quick_gelu")
    hf_cfg._attn_implementation = "eager"
    ref = qwen.Qwen2VisionTransformerPretrainedModel(hf_cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.2)
    ours = DynamicViT(DynamicViTConfig(embed_dim=32, depth=2, num_heads=4, mlp_ratio=2, patch_size=4,
                                       temporal_patch_size=2, spatial_merge_size=2, hidden_size=48)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    px, grid = preprocess(_images(), patch=4, merge=2, min_pixels=16 * 16, max_pixels=40 * 40)
    with torch.no_grad():
        want = ref(px, grid).pooler_output
        got = ours(px, grid)
    assert got.shape == (int(grid.prod(-1).sum()) // 4, 48)
    assert (got - want).abs().max() < 1e-4
    # packing is exact: each image alone gives its rows of the packed output
    with torch.no_grad():
        n0 = int(grid[0].prod())
        alone = ours(px[:n0], grid[:1])
    assert (alone - got[: n0 // 4]).abs().max() < 1e-5


def test_bad_sizes_are_one_line_errors():
    with pytest.raises(UserError, match="multiple of patch"):
        patchify(torch.zeros(3, 30, 28), patch=14, merge=2)
    with pytest.raises(UserError, match="aspect ratio"):
        smart_resize(1, 500)
    vit = DynamicViT(DynamicViTConfig(embed_dim=32, num_heads=4, patch_size=4, hidden_size=8))
    with pytest.raises(UserError, match="grid_thw"):
        vit(torch.zeros(5, 3 * 2 * 16), torch.tensor([[1, 2, 2]]))
