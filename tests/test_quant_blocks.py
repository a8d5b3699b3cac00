"""Weight-only rows handed to the block kernel (`llmlab.quant.blocks`)."""
from __future__ import annotations

import pytest
import torch

from llmlab.infer.fused import FusedModel, QLinear, fused
from llmlab.kernels import build as kernel, ggml
from llmlab.quant.apply import quantize_model
from llmlab.quant.blocks import attach_blocks, to_blocks
from llmlab.quant.gptq import gptq, hessian
from llmlab.quant.ptq import rtn, rtn_fake

pytestmark = pytest.mark.skipif(kernel.load() is None, reason="no C compiler: the block kernel is not built")


def _w(rows=8, k=576, seed=0):
    return torch.randn(rows, k, generator=torch.Generator().manual_seed(seed))


def _steps(q: ggml.QuantWeight, w: torch.Tensor) -> float:
    """The largest difference between the blocks' decode and w, in steps of the block."""
    return float(((q.dequantize() - w).abs() / q.d.repeat_interleave(32, dim=1)).max())


@pytest.mark.parametrize("sym", [False, True])
def test_int4_g128_rows_become_4_bit_blocks_with_a_ragged_last_group(sym):
    w = rtn_fake(_w(), 4, 128, sym)  # 576 = 4 x 128 + 64
    q = to_blocks(w, 128)
    assert q is not None and q.fmt == 4 and (q.rows, q.k) == (8, 576)
    assert _steps(q, w) < 1e-3
    d = q.d.reshape(8, -1)
    assert torch.equal(d[:, :4], d[:, :1].expand(-1, 4)) and torch.equal(d[:, 16:], d[:, 16:17].expand(-1, 2))
    x = torch.randn(3, 576)
    assert torch.allclose(ggml.matmul(x, q), x @ q.dequantize().t(), atol=1e-4, rtol=1e-5)
    assert torch.allclose(q.dequantize(), w, atol=1e-6)


def test_int8_per_channel_rows_become_8_bit_blocks():
    w = rtn(_w(4, 256), 8, "channel", True)
    q = to_blocks(w, -1)
    assert q is not None and q.fmt == 8 and _steps(q, w) < 1e-3
    assert torch.allclose(q.dequantize(), w, atol=1e-6)


def test_gptq_rows_are_on_their_groups_grid():
    w, x = _w(16, 256, 1), torch.randn(64, 256)
    wq = gptq(w, hessian(x), bits=4, group=128, sym=False, act_order=True, clip=True)
    q = to_blocks(wq, 128)
    assert q is not None and q.fmt == 4 and _steps(q, wq) < 1e-3


def test_weights_on_no_group_grid_are_refused():
    w = _w(8, 256)
    assert to_blocks(w, 128) is None  # plain fp32
    s = torch.rand(256) + 0.5  # AWQ stores Q(W s) / s: every column has its own 1/s
    assert to_blocks(rtn_fake(w * s, 4, 128, False) / s, 128) is None
    assert to_blocks(rtn_fake(w, 4, 64, False), 128) is None  # two grids in one granule
    assert to_blocks(rtn_fake(w, 4, 128, False), 64) is not None  # halves of a g128 group are on its grid
    assert to_blocks(rtn_fake(_w(8, 240), 4, 48, False), 48) is None  # 48 is not a whole number of blocks


def test_an_rtn_model_decodes_through_the_kernel_with_its_own_weights(tiny):
    import copy
    m = copy.deepcopy(tiny)
    quantize_model(m, "rtn", bits=4, group=32, sym=False)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    info = attach_blocks(m, 32)
    assert info["blocks"] == 2 * 7 and info["fp32"] == 0 and info["max_change_steps"] < 1e-3
    for n in m.quantized:
        assert ggml.blocks_for(m, n) is not None  # the weight equals the blocks' decode bit for bit
        assert torch.allclose(m.get_parameter(n), before[n], atol=1e-6)
    f = fused(m)
    assert f.has_blocks and type(f.layers[0].qkv_w) is QLinear and type(f.layers[1].down_w) is QLinear
    from llmlab.infer import fused as runner
    from llmlab.infer.generate import generate_ids
    from llmlab.infer.sampling import SamplingParams
    ids = [5, 17, 3, 42, 8]
    with_blocks = list(generate_ids(m, ids, SamplingParams(max_new_tokens=12)))
    runner._FUSED[m] = FusedModel(m, FusedModel.signature(m), blocks=False)
    try:
        fp32 = list(generate_ids(m, ids, SamplingParams(max_new_tokens=12)))
    finally:
        runner._FUSED.pop(m)
    assert with_blocks == fp32
