"""Qwen-VL's adapter: a fixed number of tokens for any square grid, equal to the formula written
out with plain matmuls, and its 2-D positions make the output depend on where a patch is."""
from __future__ import annotations

import pytest
import torch

from llmlab.errors import UserError
from llmlab.multimodal.qwenvl import QwenVLAdapter, grid_positions


def test_adapter_equals_the_formula_and_is_position_aware():
    torch.manual_seed(0)
    ad = QwenVLAdapter(vision_dim=12, lm_dim=20, num_queries=4, dim=8, heads=2).eval()
    feats = torch.randn(2, 9, 12)
    out = ad(feats)
    assert out.shape == (2, 4, 20) and ad(torch.randn(2, 16, 12)).shape == (2, 4, 20)
    # by hand: per head softmax((q W_q)(k W_k)^T / sqrt(d_h)) (v W_v), then W_o, LN, proj
    kv = ad.ln_kv(ad.kv_proj(feats))
    k_in, q_in = kv + grid_positions(9, 8), ad.ln_q(ad.queries) + grid_positions(4, 8)
    wq, wk, wv = ad.attn.in_proj_weight.chunk(3)
    bq, bk, bv = ad.attn.in_proj_bias.chunk(3)
    q, k, v = q_in @ wq.t() + bq, k_in @ wk.t() + bk, kv @ wv.t() + bv
    heads = []
    for h in range(2):
        s = slice(4 * h, 4 * h + 4)
        a = (q[:, s] @ k[:, :, s].transpose(1, 2) / 2.0).softmax(-1)
        heads.append(a @ v[:, :, s])
    hand = ad.proj(ad.ln_post(ad.attn.out_proj(torch.cat(heads, -1))))
    assert (out - hand).abs().max() < 1e-5
    # moving the patches around changes the answer only through the positions
    perm = torch.randperm(9)
    assert (ad(feats[:, perm]) - out).abs().max() > 1e-3
    with torch.no_grad():
        ad.query_pos.zero_()
        no_pos = ad(feats)
    assert no_pos.shape == out.shape and (no_pos - out).abs().max() > 1e-4


def test_grid_must_be_square():
    with pytest.raises(UserError, match="square"):
        grid_positions(10, 8)
