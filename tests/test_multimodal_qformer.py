"""BLIP hard-negative mining and ITM; the Q-Former's fixed output size and its image path."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from llmlab.multimodal.qformer import QFormer, hard_negatives, itm_loss


def test_hard_negatives_follow_similarity_and_skip_positives():
    g = torch.Generator().manual_seed(0)
    sim = torch.zeros(4, 4)
    sim[0, 2] = 20.0  # image 0 looks almost exactly like text 2: the hard negative to pick
    sim.fill_diagonal_(50.0)  # positives score highest but must never be drawn
    counts = torch.zeros(4, dtype=torch.long)
    for _ in range(50):
        nt, ni = hard_negatives(sim, generator=g)
        assert (nt != torch.arange(4)).all() and (ni != torch.arange(4)).all()
        counts[nt[0]] += 1
    assert counts[2] == 50
    groups = torch.tensor([0, 0, 1, 1])  # same caption: never a negative of each other
    for _ in range(20):
        nt, _ = hard_negatives(torch.randn(4, 4), groups, generator=g)
        assert (groups[nt] != groups).all()
    with pytest.raises(ValueError):
        hard_negatives(torch.randn(2, 2), torch.tensor([0, 0]))


def test_itm_loss_by_hand():
    head = nn.Identity()

    def fuse(a, b):  # "match" logit = dot product: positives high
        return torch.stack([torch.zeros(len(a)), (a * b).sum(1)], dim=1)
    img = torch.eye(3) * 5
    loss = itm_loss(head, fuse, img, img.clone(), torch.tensor([1, 2, 0]), torch.tensor([2, 0, 1]))
    pos = torch.nn.functional.cross_entropy(torch.tensor([[0.0, 25.0]]), torch.tensor([1]))
    neg = torch.nn.functional.cross_entropy(torch.tensor([[0.0, 0.0]]), torch.tensor([0]))
    assert loss.item() == pytest.approx((3 * pos.item() + 6 * neg.item()) / 9, abs=1e-6)


def test_qformer_fixed_queries_and_image_dependence():
    torch.manual_seed(0)
    q = QFormer(dim=32, vision_dim=16, num_queries=5, depth=2, heads=4).eval()
    a, b = torch.randn(2, 9, 16), torch.randn(2, 30, 16)
    assert q(a).shape == (2, 5, 32) and q(b).shape == (2, 5, 32)
    assert q(a, torch.randn(2, 7, 32)).shape == (2, 12, 32)
    assert (q(a) - q(torch.randn(2, 9, 16))).abs().max() > 1e-4  # the queries read the image
    out = q(a)
    out.sum().backward()
    assert q.queries.grad.abs().sum() > 0
