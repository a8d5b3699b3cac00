"""Weight-only rows handed to the block kernel (`llmlab.quant.blocks`)."""
from __future__ import annotations

import pytest
import torch

from llmlab.infer.fused import FusedModel, QLinear, fused
from llmlab.kernels import build as kernel, ggml
from llmlab.quant.apply import quantize_model
from llmlab.quant.blocks import attach_blocks, to_blocks
from llmlab.quant.gptq import gptq, gptq_grid, hessian
from llmlab.quant.ptq import rtn, rtn_fake, rtn_grid

pytestmark = pytest.mark.skipif(kernel.load() is None, reason="no C compiler: the block kernel is not built")


def _w(rows=8, k=576, seed=0):
    return torch.randn(rows, k, generator=torch.Generator().manual_seed(seed))


def _steps(q: ggml.QuantWeight, w: torch.Tensor) -> float:
    """The largest difference between the blocks' decode and w, in steps of the block."""
    return float(((q.dequantize() - w).abs() / q.d.repeat_interleave(32, dim=1)).max())


@pytest.mark.parametrize("sym", [False, True])
def test_int4_g128_grids_become_4_bit_blocks_with_a_ragged_last_group(sym):
    g = rtn_grid(_w(), 4, 128, sym)  # 576 = 4 x 128 + 64
    w = g.dequantize()
    assert torch.equal(w, rtn_fake(_w(), 4, 128, sym))
    q = to_blocks(g)
    assert q is not None and q.fmt == 4 and (q.rows, q.k) == (8, 576)
    assert _steps(q, w) < 1e-5  # only the fp32 rounding of d u + m vs (q - z) s
    d = q.d.reshape(8, -1)
    assert torch.equal(d[:, :4], d[:, :1].expand(-1, 4)) and torch.equal(d[:, 16:], d[:, 16:17].expand(-1, 2))
    assert torch.equal(d[:, ::4][:, :4], g.scale[:, :4].float())  # the quantizer's own scales, not re-derived
    x = torch.randn(3, 576)
    assert torch.allclose(ggml.matmul(x, q), x @ q.dequantize().t(), atol=1e-4, rtol=1e-5)
    assert torch.allclose(q.dequantize(), w, atol=1e-6)


def test_int8_per_channel_grids_become_8_bit_blocks():
    g = rtn_grid(_w(4, 256), 8, -1, True)
    q = to_blocks(g)
    assert q is not None and q.fmt == 8 and torch.equal(q.qs, g.codes)
    assert torch.equal(q.dequantize(), rtn(_w(4, 256), 8, "channel", True))  # d * q is (q - 0) * s exactly


@pytest.mark.parametrize("act_order,clip,group", [(True, True, 128), (True, False, 128), (False, False, 128),
                                                  (True, False, -1)])
def test_gptq_hands_over_the_grid_it_quantized_on(act_order, clip, group):
    w, x = _w(16, 288, 1), torch.randn(64, 288)  # 288 = 2 x 128 + 32: a ragged last group
    g = gptq_grid(w, hessian(x), 4, group, False, act_order, ragged=True, clip=clip)
    wq = gptq(w, hessian(x), 4, group, False, act_order, ragged=True, clip=clip)
    assert torch.equal(g.dequantize().float(), wq)
    assert int(g.codes.max()) <= 15 and g.scale.shape == (16, 3 if group > 0 else 1)
    q = to_blocks(g)
    assert q is not None and q.fmt == 4 and _steps(q, wq) < 1e-5


def test_grids_the_kernel_cannot_take_are_refused():
    assert to_blocks(rtn_grid(_w(8, 256), 8, 128, False)) is None  # 256 codes: no zero-point 8-bit block
    assert to_blocks(rtn_grid(_w(8, 240), 4, 48, False)) is None  # 48 is not a whole number of blocks
    assert to_blocks(rtn_grid(_w(8, 256), 3, 64, True)).fmt == 4  # int3: codes -3..3 fit a 4-bit block


def test_an_rtn_model_decodes_through_the_kernel_with_its_own_weights(tiny):
    import copy
    m = copy.deepcopy(tiny)
    grids: dict = {}
    quantize_model(m, "rtn", bits=4, group=32, sym=False, grids=grids)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    info = attach_blocks(m, grids)
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


def test_only_rtn_and_gptq_rows_hand_over_grids(tiny):
    import copy
    m, grids = copy.deepcopy(tiny), {}
    calib = torch.randint(0, tiny.config.vocab_size, (2, 16))
    quantize_model(m, "awq", bits=4, group=32, sym=False, calib=calib, grids=grids)
    assert grids == {}  # AWQ's Q(W s) / s has a scale per column: it stays an fp32 matmul
    assert attach_blocks(m, grids)["blocks"] == 0
    quantize_model(m, "gptq", bits=4, group=32, sym=False, calib=calib, grids=grids)
    assert len(grids) == 2 * 7 and attach_blocks(m, grids)["blocks"] == 2 * 7


def _bench(name: str):
    """A benchmarks/ script as a module (benchmarks/ on sys.path, as when the script runs)."""
    import importlib.util
    import sys
    from pathlib import Path
    d = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(d) not in sys.path:
        sys.path.insert(0, str(d))
    spec = importlib.util.spec_from_file_location(name, d / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_saved_row_keeps_its_grids_for_the_kernel(tiny, tmp_path):
    """benchmarks/quant_methods.py's --save-dir file carries the codes, so quant_decode.py's saved
    GPTQ row goes to the kernel exactly as a freshly quantized one."""
    import copy
    qm = _bench("quant_methods")
    from llmlab.quant.calibrate import quantizable_linears
    m, grids = copy.deepcopy(tiny), {}
    info = quantize_model(m, "rtn", bits=4, group=32, sym=False, grids=grids)
    lins = list(quantizable_linears(m))
    qm.save_row(m, tmp_path / "row.safetensors", lins, info, grids)
    m2 = copy.deepcopy(tiny)
    info2, grids2 = qm.load_row(m2, tmp_path / "row.safetensors", lins)
    assert info2 == info and set(grids2) == set(grids)
    for n, g in grids.items():
        h = grids2[n]
        assert torch.equal(h.codes, g.codes) and torch.equal(h.scale, g.scale) and (h.group, h.bits, h.sym) == (32, 4, False)
    assert attach_blocks(m2, grids2)["blocks"] == len(lins)
    qm.save_row(m, tmp_path / "plain.safetensors", lins, info)  # a file without grids still loads
    assert qm.load_row(copy.deepcopy(tiny), tmp_path / "plain.safetensors", lins)[1] == {}


def test_an_old_or_foreign_row_file_fails_with_one_clear_line(tiny, tmp_path):
    """A row saved before session 10 (weights, no codes) still loads for perplexity, but the decode
    benchmark refuses to time it as a kernel row; a file that is not a row, or another model's
    row, stops with a line naming the file instead of a KeyError or a copy error."""
    import copy

    from safetensors.torch import save_file

    from llmlab.quant.calibrate import quantizable_linears
    qm, qd = _bench("quant_methods"), _bench("quant_decode")
    m = copy.deepcopy(tiny)
    info = quantize_model(m, "rtn", bits=4, group=32, sym=False)
    lins = list(quantizable_linears(m))
    qm.save_row(m, tmp_path / "old.safetensors", lins, info)  # the pre-grid format
    m2, grids = copy.deepcopy(tiny), {}
    assert qm.load_row(m2, tmp_path / "old.safetensors", lins) == (info, {})
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(
        quantizable_linears(m).values(), quantizable_linears(m2).values()))
    with pytest.raises(SystemExit, match="holds no integer codes"):
        qd.saved_row(tiny, tmp_path / "old.safetensors", qm.load_row)
    quantize_model(m, "rtn", bits=4, group=32, sym=False, grids=grids)
    qm.save_row(m, tmp_path / "new.safetensors", lins, info, grids)
    m3, g3 = qd.saved_row(tiny, tmp_path / "new.safetensors", qm.load_row)
    assert set(g3) == set(lins) and attach_blocks(m3, g3)["blocks"] == len(lins)
    weights = {n: mod.weight.detach().contiguous() for n, mod in quantizable_linears(m).items()}
    save_file(weights, str(tmp_path / "bare.safetensors"))
    with pytest.raises(SystemExit, match="not a row saved by quant_methods"):
        qm.load_row(copy.deepcopy(tiny), tmp_path / "bare.safetensors", lins)
    n0 = lins[0]
    save_file({**weights, n0: weights[n0][:, :-1].contiguous()}, str(tmp_path / "other.safetensors"),
              metadata={"info": "{}"})
    with pytest.raises(SystemExit, match=f"{n0} is"):
        qm.load_row(copy.deepcopy(tiny), tmp_path / "other.safetensors", lins)
