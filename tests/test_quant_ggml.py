"""GGUF block weights kept as blocks (llmlab/quant): exact weights, the C kernel against float64,
row invariance, and the model path that uses them (with its invalidation and fallback)."""
from __future__ import annotations

import os
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch

from llmlab.infer import fused as runner
from llmlab.infer.generate import generate_ids
from llmlab.device import num_threads
from llmlab.infer.fused import QLinear, fused
from llmlab.infer.sampling import SamplingParams
from llmlab.kernels import build as kernel, ggml
from llmlab.kernels.ggml import QuantWeight, matmul

pytestmark = pytest.mark.skipif(kernel.load() is None, reason="no C compiler: the block kernel is not built")


def _blocks(qtype: str, rows: int, k: int, seed: int = 0):
    w = np.random.default_rng(seed).standard_normal((rows, k)).astype(np.float32) * 0.05
    raw = gguf.quants.quantize(w, getattr(gguf.GGMLQuantizationType, qtype))
    return torch.from_numpy(np.ascontiguousarray(raw)).reshape(-1), raw


def _loader_tensor(qtype, raw, shape):
    """What GGUFFile.tensor returns for these bytes (the loader's fp32 weight)."""
    from llmlab.model.gguf_file import GGUFFile, TensorInfo
    f = GGUFFile.__new__(GGUFFile)
    f._data = raw.numpy()
    return f.tensor(TensorInfo("w", shape, getattr(gguf.GGMLQuantizationType, qtype).value, 0, raw.numel()))


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_blocks_decode_to_the_loaders_fp32_weights_bit_for_bit(qtype):
    raw, raw_np = _blocks(qtype, 70, 96)
    q = QuantWeight.from_gguf(qtype, raw, (70, 96))
    ours_loader = _loader_tensor(qtype, raw, (70, 96))
    reference = torch.from_numpy(gguf.quants.dequantize(raw_np, getattr(gguf.GGMLQuantizationType, qtype)).astype(np.float32))
    assert torch.equal(q.dequantize(), ours_loader)
    assert torch.equal(q.dequantize(), reference.reshape(70, 96))
    assert q.check(ours_loader) and not q.check(ours_loader + 1e-3)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_matches_float64_and_rows_do_not_depend_on_the_row_count(qtype, threads, monkeypatch):
    monkeypatch.setattr(ggml, "PARALLEL_MACS", 1)  # split even small calls across the threads
    rows, k = 203, 320  # rows not a multiple of 4: the tail path too
    raw, _ = _blocks(qtype, rows, k, seed=1)
    q = QuantWeight.from_gguf(qtype, raw, (rows, k))
    w = q.dequantize()
    x = torch.randn(150, k, generator=torch.Generator().manual_seed(2))  # > one 64-row chunk
    with num_threads(threads):
        y = matmul(x, q)
        ref = (x.double() @ w.double().T)
        assert (y.double() - ref).abs().max() < 2e-5 * ref.abs().max()
        for n in (1, 2, 3, 5, 63, 64, 65, 149):
            assert torch.equal(matmul(x[:n], q), y[:n]), n
        b = torch.randn(rows)
        assert torch.equal(matmul(x[:3], q, b), y[:3] + b)
    with num_threads(1):
        assert torch.equal(matmul(x, q), y)  # the thread count does not change a bit


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0"])
def test_many_row_tiles_give_every_row_the_batch_1_bits(qtype, monkeypatch):
    """AVX2's 6 x 2 tile for 2+ input rows (then 4 x 2, then 2 rows alone, then the tail of a matrix
    whose rows are not a multiple of 4): every row count and thread split gives each row the bits of
    a batch of 1 (the engine's batch invariance)."""
    monkeypatch.setattr(ggml, "PARALLEL_MACS", 1)
    for rows in (4, 6, 8, 10, 14, 22, 27):
        raw, _ = _blocks(qtype, rows, 64, seed=rows)
        q = QuantWeight.from_gguf(qtype, raw, (rows, 64))
        x = torch.randn(7, 64, generator=torch.Generator().manual_seed(rows))
        one = torch.cat([matmul(x[i:i + 1], q) for i in range(7)])
        for threads in (1, 2):
            with num_threads(threads):
                for n in (2, 3, 7):
                    assert torch.equal(matmul(x[:n], q), one[:n]), (rows, threads, n)


def test_batch_1_layer_products_may_split_and_the_threshold_can_be_overridden():
    """From 250k multiply-adds a call follows the thread count it is given (for a batch-1 step's
    products: the tuner's per-layer pick); SmolLM2's smallest batch-1 product, o (576 x 576),
    is above it. LLMLAB_PARALLEL_MACS sets it (the quiet script's control arm)."""
    assert ggml.PARALLEL_MACS <= 576 * 576
    code = "from llmlab.kernels import ggml; print(ggml.PARALLEL_MACS)"
    env = {**os.environ, "LLMLAB_PARALLEL_MACS": "2000000"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2000000"


def test_kernel_rejects_bad_input():
    raw, _ = _blocks("Q8_0", 8, 64)
    q = QuantWeight.from_gguf("Q8_0", raw, (8, 64))
    with pytest.raises(ValueError):
        matmul(torch.randn(2, 32), q)
    with pytest.raises(ValueError):
        matmul(torch.randn(2, 64, dtype=torch.float64), q)
    with pytest.raises(ValueError):
        QuantWeight.from_gguf("Q8_0", raw, (16, 32 + 1))


def test_smollm2_keeps_every_matrix_as_blocks_and_decodes_with_them(smollm2, smollm2_tokenizer):
    assert len(smollm2.quantized) == 30 * 7 + 1  # 7 matrices a layer + the tied embedding (Q8_0)
    f = fused(smollm2)
    assert f.has_blocks and f.n_plain == 0
    assert type(f.head_w) is QLinear and type(f.layers[0].qkv_w) is QLinear
    L = f.layers[3]  # fused q/k/v with llama.cpp's Q/K row permutation undone
    assert torch.equal(L.qkv_w.q.dequantize(), L.qkv_w.w)
    ids = smollm2_tokenizer.encode("The capital of France is")
    with_blocks = list(generate_ids(smollm2, ids, SamplingParams(max_new_tokens=24)))
    runner._FUSED[smollm2] = runner.FusedModel(smollm2, runner.FusedModel.signature(smollm2), blocks=False)
    try:
        fp32 = list(generate_ids(smollm2, ids, SamplingParams(max_new_tokens=24)))
    finally:
        runner._FUSED.pop(smollm2)
    assert with_blocks == fp32


def test_blocks_are_dropped_once_the_weights_change(smollm2_path):
    from llmlab.model.gguf_io import load_gguf
    model = load_gguf(smollm2_path)
    name = "model.layers.0.mlp.down_proj.weight"
    assert ggml.blocks_for(model, name) is not None
    with torch.no_grad():
        model.get_parameter(name).mul_(1.0001)  # an in-place update, as an optimizer step does
    assert ggml.blocks_for(model, name) is None
    f = fused(model)
    assert type(f.layers[0].down_w) is torch.Tensor and type(f.layers[1].down_w) is QLinear
    assert f.n_plain == 1


def test_without_a_compiler_models_fall_back_to_fp32(smollm2_path, monkeypatch):
    from llmlab.model.gguf_io import load_gguf
    monkeypatch.setattr(kernel, "_LIB", [None])
    model = load_gguf(smollm2_path)
    f = fused(model)
    assert not f.has_blocks and type(f.head_w) is torch.Tensor
    assert len(list(generate_ids(model, [1, 2, 3], SamplingParams(max_new_tokens=2)))) == 2


@pytest.mark.skipif(not ggml.has_gemm(), reason="the GEMM path needs AVX-512")
@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0"])
def test_gemm_path_matches_float64_and_is_row_invariant(qtype, monkeypatch):
    monkeypatch.setattr(ggml, "PARALLEL_MACS", 1)
    rows, k = 77, 160  # a partial 32-row panel and a partial 8-row tile
    raw, _ = _blocks(qtype, rows, k, seed=3)
    q = QuantWeight.from_gguf(qtype, raw, (rows, k))
    x = torch.randn(45, k, generator=torch.Generator().manual_seed(4))
    ref = x.double() @ q.dequantize().double().T
    for threads in (1, 2):
        with num_threads(threads):
            y = matmul(x, q, gemm=True)
            assert (y.double() - ref).abs().max() < 2e-5 * ref.abs().max()
            for n in (1, 7, 8, 9, 44):
                assert torch.equal(matmul(x[:n], q, gemm=True), y[:n]), n


def test_engine_prefills_with_the_gemm_path_and_decodes_with_blocks(smollm2):
    from llmlab.infer.paged import PagedKVCache
    from llmlab.infer.runner import PagedRunner
    r = PagedRunner(smollm2, PagedKVCache.for_model(smollm2, 8))
    assert r.packed and r.padded_rows(3) == 3 and r.padded_rows(3, prefill=True) == 3
    assert type(r.w.layers[0].up_w) is QLinear and not r.w.layers[0].up_w.gemm
    # prefill: the blocks' GEMM path where the build has one, else the decode path; never an fp32 copy
    assert type(r.w_prefill.layers[0].up_w) is QLinear and r.w_prefill.layers[0].up_w.gemm == ggml.has_gemm()
