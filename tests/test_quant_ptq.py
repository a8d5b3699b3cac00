"""PTQ building blocks: round trips, error bounds, granularity, packing, per-token activations."""
import pytest
import torch

from llmlab.errors import UserError
from llmlab.quant import ptq


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group", ["tensor", "channel", 32, 64, 128])
def test_round_trip_error_bound(bits, sym, group):
    torch.manual_seed(0)
    w = torch.randn(16, 256) * torch.rand(16, 1) * 3
    q = ptq.quantize(w, bits, group, sym)
    err = (q.dequantize() - w).abs()
    scale = q.per_column(q.scale).expand_as(w)
    assert bool((err <= scale / 2 + 1e-6).all())  # round to nearest: at most half a step
    lo, hi = ptq.qrange(bits, sym)
    assert q.codes.shape == w.shape and q.codes.float().min() >= lo and q.codes.float().max() <= hi
    assert q.scale.shape == ({"tensor": (1, 1), "channel": (16, 1)}[group] if isinstance(group, str) else (16, 256 // group))


def test_absmax_hand_computed():
    w = torch.tensor([[0.5, -1.27, 0.01, 1.0]])
    q = ptq.quantize(w, 8, "tensor", sym=True)
    assert torch.allclose(q.scale, torch.tensor([[0.01]]))
    assert q.codes.tolist() == [[50, -127, 1, 100]]
    z = ptq.quantize(torch.tensor([[-1.0, 0.0, 2.0, 3.0]]), 4, "tensor", sym=False)
    assert torch.allclose(z.scale, torch.tensor([[4.0 / 15]]))
    assert float(z.zero) == round(1.0 / (4.0 / 15))  # 0 maps to the integer zero-point exactly
    assert float(z.dequantize()[0, 1]) == 0.0


def test_finer_granularity_is_more_accurate():
    torch.manual_seed(1)
    w = torch.randn(64, 512) * torch.logspace(-2, 1, 64)[:, None]
    errs = [float((ptq.rtn(w, 4, g, True) - w).pow(2).mean()) for g in ("tensor", "channel", 128, 32)]
    assert errs == sorted(errs, reverse=True)
    assert ptq.quantize(w, 4, 32, False).nbytes() > ptq.quantize(w, 4, 128, False).nbytes()


def test_bad_input():
    with pytest.raises(UserError, match="does not divide"):
        ptq.quantize(torch.randn(4, 100), 4, 64)
    with pytest.raises(UserError, match="bit width"):
        ptq.quantize(torch.randn(4, 64), 5, 32)


def test_pack_int4_two_per_byte():
    codes = torch.randint(0, 16, (64,))
    packed = ptq.pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == 32
    assert int(packed[0]) == int(codes[0]) | (int(codes[1]) << 4)
    assert torch.equal(ptq.unpack_int4(packed).long(), codes)


def test_per_token_activation_quant():
    x = torch.randn(3, 5, 64)
    x[0, 0, 3] = 50.0  # an outlier only inflates its own token's scale
    q, s = ptq.quantize_per_token(x)
    assert q.dtype == torch.int8 and s.shape == (3, 5, 1)
    assert torch.allclose(s[..., 0], x.abs().amax(-1) / 127)
    assert bool(((ptq.fake_quant_per_token(x) - x).abs() <= s / 2 + 1e-6).all())
    assert float(s[0, 1, 0]) < 0.1
