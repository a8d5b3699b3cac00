"""NF4 + double quantization against a hand-written reference, memory, and QLoRA training."""
from __future__ import annotations

import pytest
import torch

from llmlab.finetune.lora import LoraConfig, lora_layers
from llmlab.quant.nf4 import NF4_LEVELS, nf4_levels_from_normal, quantize_int4_absmax, quantize_nf4
from llmlab.finetune.peft_format import load_lora, save_lora
from llmlab.finetune.qlora import QLoRALinear, apply_qlora, stored_weight_bytes
from llmlab.model.transformer import Transformer


def _reference_nf4(values: list[float], block: int) -> list[float]:
    """Plain-Python NF4 round trip without double quantization: nearest level times block absmax."""
    levels = NF4_LEVELS.tolist()
    out = []
    for s in range(0, len(values), block):
        blk = values[s:s + block]
        c = max(abs(v) for v in blk)
        for v in blk:
            i = min(range(16), key=lambda j: (abs(v / c - levels[j]), j))
            out.append(levels[i] * c)
    return out


def test_levels_are_normal_quantiles():
    assert NF4_LEVELS.numel() == 16 and NF4_LEVELS[7] == 0 and NF4_LEVELS[0] == -1 and NF4_LEVELS[-1] == 1
    torch.testing.assert_close(nf4_levels_from_normal(), NF4_LEVELS, atol=1e-6, rtol=0)


def test_roundtrip_matches_hand_reference():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 64, generator=g) * torch.tensor([[0.01], [1.0], [3.0], [0.2]])
    q = quantize_nf4(w, block=64, double_quant=False)
    ref = torch.tensor(_reference_nf4(w.reshape(-1).tolist(), 64)).view(4, 64)
    torch.testing.assert_close(q.dequantize(), ref, atol=1e-7, rtol=1e-6)
    # packing: two codes per byte, even element in the high nibble
    assert q.packed.dtype == torch.uint8 and q.packed.numel() == w.numel() // 2
    first_two = [min(range(16), key=lambda j: abs(v / w[0].abs().max().item() - NF4_LEVELS[j].item()))
                 for v in w[0, :2].tolist()]
    assert q.packed[0].item() == first_two[0] * 16 + first_two[1]


def test_double_quant_error_bound_and_padding():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(37, 300, generator=g) * 0.02  # 11100 values: padded last block, 174 blocks
    single = quantize_nf4(w, double_quant=False)
    dq = quantize_nf4(w, double_quant=True)
    assert dq.absmax_q.dtype == torch.int8 and dq.absmax_q.numel() == single.absmax_q.numel() == 174
    c2 = (single.absmax_q - single.absmax_q.mean()).abs().max()
    assert (dq.absmax() - single.absmax_q).abs().max() <= c2 / 254 + 1e-9  # half an int8 step
    err = (dq.dequantize() - w).abs()
    # a value's error is at most half the widest level gap times its (dequantized) block absmax
    half_gap = (NF4_LEVELS[1:] - NF4_LEVELS[:-1]).max() / 2
    assert err.max() <= half_gap * dq.absmax().max() + c2 / 254
    assert dq.dequantize().shape == w.shape


def test_nf4_beats_uniform_int4_on_normal_weights():
    w = torch.randn(256, 256, generator=torch.Generator().manual_seed(2))
    nf4_mse = (quantize_nf4(w).dequantize() - w).pow(2).mean()
    int4_mse = (quantize_int4_absmax(w) - w).pow(2).mean()
    assert nf4_mse < 0.8 * int4_mse


def test_memory_bytes():
    w = torch.randn(512, 1024)
    q = quantize_nf4(w)
    n = w.numel()
    assert q.nbytes() == n // 2 + n // 64 + 4 * ((n // 64 + 255) // 256) + 4
    assert q.nbytes() / (4 * n) < 0.13  # 4.127 bits vs 32


def test_qlora_model_trains_only_lora(tiny_config, tmp_path):
    torch.manual_seed(0)
    model = Transformer(tiny_config)
    ref = Transformer(tiny_config)
    ref.load_state_dict(model.state_dict())
    cfg = LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    apply_qlora(model, cfg)
    stored, fp32 = stored_weight_bytes(model)
    assert stored < 0.15 * fp32
    ids = torch.randint(0, tiny_config.vocab_size, (2, 12))
    # at init the output is the NF4 base's: close to fp32, not equal
    diff = (model(ids) - ref(ids)).abs().max().item()
    assert 0 < diff < 0.05
    packed = [m.packed.clone() for m in lora_layers(model).values()]
    params = [p for p in model.parameters() if p.requires_grad]
    assert all(isinstance(m, QLoRALinear) for m in lora_layers(model).values())
    opt = torch.optim.AdamW(params, lr=1e-2)
    labels = ids.roll(-1, 1)
    losses = []
    for _ in range(8):
        loss = model.loss(ids, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(a, m.packed) for a, m in zip(packed, lora_layers(model).values()))
    out = model(ids)
    save_lora(model, tmp_path / "q", cfg, method="qlora")
    torch.manual_seed(0)
    fresh = Transformer(tiny_config)
    apply_qlora(fresh, cfg)
    load_lora(fresh, tmp_path / "q")
    torch.testing.assert_close(fresh(ids), out, atol=0, rtol=0)


@pytest.mark.slow
def test_qlora_smollm2_memory(smollm2):
    import copy
    model = copy.deepcopy(smollm2)
    apply_qlora(model, LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                       "up_proj", "down_proj"]))
    stored, fp32 = stored_weight_bytes(model)
    assert fp32 == 4 * 30 * (576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536)  # 135M's projections
    assert abs(stored / fp32 - 4.127 / 32) < 0.002
    ids = torch.tensor([[1, 400, 500, 600, 700, 800, 900, 1000]])
    model.loss(ids, ids.roll(-1, 1)).backward()
    assert all(m.lora_A.weight.grad is not None for m in lora_layers(model).values())
