"""Parallel context windows (llmlab.model.pcw) and GLM's blank infilling with 2-D positions
(llmlab.model.glm): the constructions checked by hand, their masks checked through a model."""
from __future__ import annotations

import pytest
import torch

from llmlab.errors import UserError
from llmlab.model import Transformer
from llmlab.model.config import ModelConfig
from llmlab.model.glm import TwoDPositions, blank_infilling, glm_logits
from llmlab.model.pcw import pcw_inputs, pcw_logits

TINY = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)


def _model(**kw):
    torch.manual_seed(0)
    return Transformer(ModelConfig(**{**TINY, **kw})).eval()


def test_pcw_inputs_by_hand():
    ids, pos, keep = pcw_inputs([[1, 2], [3, 4, 5]], [6, 7])
    assert ids.tolist() == [[1, 2, 3, 4, 5, 6, 7]]
    assert pos.tolist() == [0, 1, 0, 1, 2, 3, 4]  # windows share positions; the task starts at the longest (3)
    want = [[1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [0, 0, 1, 0, 0, 0, 0],  # window 2 does not see window 1
            [0, 0, 1, 1, 0, 0, 0],
            [0, 0, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 1, 0],  # task tokens: every window token, causal among themselves
            [1, 1, 1, 1, 1, 1, 1]]
    assert keep[0, 0].int().tolist() == want


def test_pcw_through_the_model():
    m = _model()
    w1, w2, w3, task = [3, 9, 4], [7, 1], [12, 5, 5, 8], [20, 21, 22]
    # one window is plain causal attention over window + task
    plain = m(torch.tensor([w1 + task]))[0, -3:]
    assert torch.allclose(pcw_logits(m, [w1], task), plain, atol=1e-5)
    # task logits do not depend on the windows' order; they do depend on the windows' content
    a, b = pcw_logits(m, [w1, w2, w3], task), pcw_logits(m, [w3, w1, w2], task)
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, pcw_logits(m, [w1, w2], task), atol=1e-3)
    # a window's own logits equal the window run alone (shared positions, no cross-window attention)
    ids, pos, keep = pcw_inputs([w1, w3], task)
    full = m(ids, attention_mask=keep, position_ids=pos)[0]
    assert torch.allclose(full[3:7], m(torch.tensor([w3]))[0], atol=1e-5)
    with pytest.raises(UserError, match="position=alibi"):
        pcw_logits(_model(position="alibi"), [w1], task)
    with pytest.raises(UserError, match="none of them empty"):
        pcw_inputs([w1, []], task)


def test_glm_blank_infilling_paper_figure_2():
    # x1..x6 = 1..6, spans x3 and x5 x6, Part B in the order (x5 x6), (x3); [M]=90 [S]=91 [E]=92
    b = blank_infilling([1, 2, 3, 4, 5, 6], [(2, 3), (4, 6)], order=[1, 0], mask_id=90, start_id=91, end_id=92)
    assert b["input_ids"].tolist() == [1, 2, 90, 4, 90, 91, 5, 6, 91, 3]
    assert b["labels"].tolist() == [-100] * 5 + [5, 6, 92, 3, 92]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 4, 4, 4, 2, 2],  # the figure's 1 2 3 4 5 5 5 5 3 3
                                          [0, 0, 0, 0, 0, 1, 2, 3, 1, 2]]
    keep = b["attention_mask"].int()
    assert keep[:5].tolist() == [[1] * 5 + [0] * 5] * 5  # Part A: all of A, none of B
    assert keep[5:, :5].all() and keep[5:, 5:].tolist() == torch.ones(5, 5).tril().int().tolist()
    with pytest.raises(UserError, match="permutation"):
        blank_infilling([1, 2, 3], [(0, 1)], [1], 90, 91, 92)
    with pytest.raises(UserError, match="sorted, disjoint"):
        blank_infilling([1, 2, 3], [(1, 3), (0, 2)], [0, 1], 90, 91, 92)


def test_glm_mask_and_2d_positions_through_the_model():
    m, pe = _model(position="none"), TwoDPositions(64, 32)
    b = blank_infilling(list(range(1, 13)), [(2, 4), (7, 10)], [1, 0], 30, 31, 32)
    ref = glm_logits(m, pe, b)
    la = b["len_a"]
    changed_b = {**b, "input_ids": b["input_ids"].clone()}
    changed_b["input_ids"][-1] = 17  # the last Part B token: Part A and earlier Part B cannot see it
    out = glm_logits(m, pe, changed_b)
    assert torch.allclose(out[:-1], ref[:-1], atol=1e-6) and not torch.allclose(out[-1], ref[-1], atol=1e-4)
    changed_a = {**b, "input_ids": b["input_ids"].clone()}
    changed_a["input_ids"][la - 1] = 17  # the last Part A token: every query sees it (A is bidirectional)
    out = glm_logits(m, pe, changed_a)
    assert all(not torch.allclose(out[i], ref[i], atol=1e-4) for i in range(len(ref)))
    moved = {**b, "position_ids": b["position_ids"].clone()}
    moved["position_ids"][1, la:] = 0  # without the intra-span position the span tokens change
    assert not torch.allclose(glm_logits(m, pe, moved)[la:], ref[la:], atol=1e-4)
    with pytest.raises(UserError, match="position=none"):
        glm_logits(_model(), pe, b)
