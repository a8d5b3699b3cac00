"""K-quant blocks (Q4_K, Q5_K, Q6_K) in the block kernel, every instruction-set build of the kernel
(native / AVX2 / portable C), and the Q4_K/Q5_K encoders: decoded against gguf.quants.dequantize,
products against float64."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from llmlab.device import num_threads
from llmlab.kernels import build as kernel, ggml
from llmlab.kernels.ggml import QuantWeight, matmul

pytestmark = pytest.mark.skipif(kernel.load() is None, reason="no C compiler: the block kernel is not built")

KQ = ["Q4_K", "Q5_K", "Q6_K"]
ALL = ["Q4_0", "Q4_1", "Q8_0", *KQ]


def _qt(name):
    return getattr(gguf.GGMLQuantizationType, name)


def _raw(qtype: str, rows: int, k: int, seed: int = 0) -> np.ndarray:
    """Valid blocks of `qtype` (rows, bytes): random bytes for K-quants with finite fp16 scales
    (every bit pattern of the rest is a valid block), gguf's own encoder for the 32-blocks."""
    rng = np.random.default_rng(seed)
    if qtype not in KQ:
        w = rng.standard_normal((rows, k)).astype(np.float32) * 0.05
        return np.ascontiguousarray(gguf.quants.quantize(w, _qt(qtype)))
    size = ggml._RAW[qtype]
    b = rng.integers(0, 256, (rows * k // 256, size), dtype=np.uint8)
    scales = (rng.standard_normal((b.shape[0], 2)) * 0.01).astype(np.float16).view(np.uint8)
    if qtype == "Q6_K":
        b[:, 208:210] = scales[:, :2]
    else:
        b[:, 0:4] = scales
    return b.reshape(rows, -1)


@pytest.mark.parametrize("qtype", KQ)
def test_kquant_blocks_decode_like_gguf_bit_for_bit(qtype):
    from llmlab.model.gguf_file import GGUFFile, TensorInfo
    rows, k = 37, 768
    raw = _raw(qtype, rows, k)
    ref = torch.from_numpy(gguf.quants.dequantize(raw, _qt(qtype)).astype(np.float32)).reshape(rows, k)
    q = QuantWeight.from_gguf(qtype, torch.from_numpy(raw.reshape(-1).copy()), (rows, k))
    assert torch.equal(q.dequantize(), ref)
    f = GGUFFile.__new__(GGUFFile)  # the loader's fp32 weight comes from the same blocks
    f._data = raw.reshape(-1)
    assert torch.equal(f.tensor(TensorInfo("w", (rows, k), _qt(qtype).value, 0, raw.size)), ref)
    assert q.check(ref) and not q.check(ref + 1e-3)
    sub = q.index_rows(torch.tensor([5, 0, 36]))  # row selection (the Q/K unpermute) keeps rows whole
    assert torch.equal(sub.dequantize(), ref[[5, 0, 36]])
    with pytest.raises(ValueError):
        QuantWeight.from_gguf(qtype, torch.from_numpy(raw.reshape(-1).copy()), (rows * 6, k // 6))  # 128 columns: not whole super-blocks


def _isas():
    out = ["native", "portable"]
    if "avx2" in kernel._cpu_flags().split() and "fma" in kernel._cpu_flags().split():
        out.insert(1, "avx2")
    return out


@pytest.mark.parametrize("isa", _isas())
def test_every_build_and_format_matches_float64_and_is_row_invariant(isa, monkeypatch):
    lib = kernel.open_lib(isa)
    assert lib.llmlab_ggml_simd() == {"native": lib.llmlab_ggml_simd(), "avx2": 2, "portable": 0}[isa]
    monkeypatch.setattr(kernel, "_LIB", [lib])
    monkeypatch.setattr(ggml, "PARALLEL_MACS", 1)  # split even small calls across threads
    rows, k = 45, 512  # rows not a multiple of 4: the tail path too
    x = torch.randn(70, k, generator=torch.Generator().manual_seed(1))
    for qtype in ALL:
        q = QuantWeight.from_gguf(qtype, torch.from_numpy(_raw(qtype, rows, k, seed=2).reshape(-1).copy()), (rows, k))
        ref = x.double() @ q.dequantize().double().T
        paths = [False] + ([True] if ggml.has_gemm() else [])
        for gemm in paths:
            for threads in (1, 2):
                with num_threads(threads):
                    y = matmul(x, q, gemm=gemm)
                    assert (y.double() - ref).abs().max() < 2e-5 * ref.abs().max(), (qtype, gemm)
                    for n in (1, 3, 8, 65):
                        assert torch.equal(matmul(x[:n], q, gemm=gemm), y[:n]), (qtype, gemm, n)


def _rmse(a, b):
    return float(((a - b) ** 2).mean().sqrt())


def test_q4_k_and_q5_k_encoders_decode_with_gguf():
    from llmlab.quant.gguf_export import encode_blocks
    from llmlab.quant.kquants import encode_q4_k, encode_q5_k
    torch.manual_seed(0)
    w = torch.randn(8, 512) * torch.logspace(-2, 0, 8)[:, None]
    w[0, :256] = 0.0  # an all-zero super-block
    w[1, 7] = 2.5  # an outlier inside one sub-block
    w[2, 256:] = w[2, 256:].abs() + 0.1  # all positive: the min clamps to 0
    err = {}
    for name, enc, size in [("Q4_K", encode_q4_k, 144), ("Q5_K", encode_q5_k, 176)]:
        raw = enc(w).numpy()
        assert raw.shape == (8, 2 * size) and raw.dtype == np.uint8
        deq = torch.from_numpy(gguf.quants.dequantize(raw, _qt(name)).astype(np.float32)).view(8, 512)
        assert bool((deq[0, :256] == 0).all())
        err[name] = _rmse(deq / w.std(1, keepdim=True), w / w.std(1, keepdim=True))
        # and our kernel reads the file's blocks to exactly these weights
        q = QuantWeight.from_gguf(name, torch.from_numpy(raw.reshape(-1).copy()), (8, 512))
        assert torch.equal(q.dequantize(), deq)
    q41 = gguf.quants.dequantize(encode_blocks(w, "Q4_1").numpy(), _qt("Q4_1")).reshape(8, 512)
    err["Q4_1"] = _rmse(torch.from_numpy(q41) / w.std(1, keepdim=True), w / w.std(1, keepdim=True))
    # Q4_K (4.5 bits) beats Q4_1 (5 bits) by its scale search; Q5_K halves Q4_K's error
    assert err["Q4_K"] < err["Q4_1"], err
    assert err["Q5_K"] < 0.6 * err["Q4_K"], err


def test_kquant_export_loads_and_runs_on_the_blocks(smollm2_tokenizer, tmp_path):
    from llmlab.infer import fused as fz
    from llmlab.infer.fused import QLinear, fused
    from llmlab.infer.runner import ContiguousDecoder
    from llmlab.model.config import ModelConfig
    from llmlab.model.gguf_io import load_gguf
    from llmlab.model.transformer import Transformer
    from llmlab.quant.gguf_export import write_gguf
    tok = smollm2_tokenizer
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=1024, hidden_size=256, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, intermediate_size=512,
                                    max_position_embeddings=64)).eval()
    for fmt in ("Q4_K", "Q5_K"):
        info = write_gguf(model, tok, tmp_path / f"m.{fmt}.gguf", fmt)
        assert info["types"] == {fmt: 14, "Q6_K": 1, "F32": 5}  # the tied embedding at Q6_K
        back = load_gguf(tmp_path / f"m.{fmt}.gguf")
        assert len(back.quantized) == 2 * 7 + 1
        f = fused(back)
        assert f.has_blocks and f.n_plain == 0 and type(f.layers[0].up_w) is QLinear
        ids = [1, 5, 9, 200, 7]
        with_blocks = ContiguousDecoder(back, 16).forward(ids)
        fz._FUSED[back] = fz.FusedModel(back, fz.FusedModel.signature(back), blocks=False)
        plain = ContiguousDecoder(back, 16).forward(ids)
        assert (with_blocks - plain).abs().max() < 1e-4 * plain.abs().max()


def test_int8_activation_option(monkeypatch):
    """LLMLAB_INT8_ACTIVATIONS: Q4/Q8 blocks against int8-quantized inputs where the build has SIMD
    int8 dot products (AVX-512 VNNI or AVX2; not `portable`). Close to float64 within the 8-bit
    rounding of x, rows independent of the row count; other formats, and the portable build, exact."""
    rows, k = 45, 512
    x = torch.randn(20, k, generator=torch.Generator().manual_seed(3))
    # expected from the CPU and the chosen build, not from the code under test
    simd = "avx2" in kernel._cpu_flags().split() and kernel.isa() != "portable"
    assert ggml.int8_simd() == simd, (ggml.int8_isa(), kernel.isa())
    for qtype in ALL:
        q = QuantWeight.from_gguf(qtype, torch.from_numpy(_raw(qtype, rows, k, seed=4).reshape(-1).copy()), (rows, k))
        ref = x.double() @ q.dequantize().double().T
        exact = matmul(x, q)
        monkeypatch.setenv("LLMLAB_INT8_ACTIVATIONS", "1")
        y = matmul(x, q)
        monkeypatch.delenv("LLMLAB_INT8_ACTIVATIONS")
        if q.fmt in (4, 8) and simd:
            err = float((y.double() - ref).abs().max() / ref.abs().max())
            assert 1e-5 < err < 2e-2, (qtype, err)  # really int8 (not the exact path), and close
            for n in (1, 3, 8):
                assert torch.equal(matmul(x[:n], q, int8=True), y[:n]), (qtype, n)
        else:
            assert torch.equal(y, exact), qtype
