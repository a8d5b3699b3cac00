"""llmlab calc against measurement: FLOPs vs torch.utils.flop_counter, KV bytes and model-state
bytes vs real allocations, Korthikanti's activation formula vs the bytes autograd really saves."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from llmlab.calc import activations, chinchilla, comm, flops, memory, pipeline, roofline
from llmlab import device as D
from llmlab.model.config import ModelConfig
from llmlab.model.kv_cache import KVCache
from llmlab.model.transformer import Transformer


@pytest.fixture()
def model(monkeypatch):
    monkeypatch.setattr(D, "_ONEDNN", [False])  # oneDNN's linear op is invisible to the FLOP counter
    torch.manual_seed(0)
    # hidden 48 -> SwiGLU width 128 = 8h/3 exactly, so the MLP is the 16 h^2 of the formula
    return Transformer(ModelConfig(vocab_size=96, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                   max_position_embeddings=64))


def _count(fn) -> int:
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def test_forward_and_training_flops_match_flop_counter(model):
    b, s = 2, 32
    x = torch.randint(0, 96, (b, s))
    measured_fwd = _count(lambda: model(x))
    assert measured_fwd == flops.model_forward_flops(model.config, b, s)
    measured_step = _count(lambda: model(x).sum().backward())
    assert measured_step == 3 * measured_fwd  # backward = 2 x forward
    per_layer = flops.layer_forward_flops(b, s, 48)
    assert per_layer == 24 * b * s * 48 ** 2 + 4 * b * s ** 2 * 48


def test_decode_flops_and_kv_bytes(model):
    c = model.config
    cache = KVCache.for_model(model, batch=1, max_len=40)
    with torch.no_grad():
        model(torch.randint(0, 96, (1, 20)), cache=cache)
        measured = _count(lambda: model(torch.randint(0, 96, (1, 1)), cache=cache))
    assert measured == flops.decode_flops_per_token(c, 21)  # the new token sees 20 cached + itself
    allocated = sum(t.numel() * t.element_size() for t in cache.k + cache.v)
    assert allocated == flops.kv_cache_bytes(c, 1, 40, dtype_bytes=4)


def test_model_state_bytes_match_adam_allocations(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 96, (1, 8))).sum().backward()
    opt.step()
    params = list(model.parameters())
    measured = sum(p.numel() * p.element_size() for p in params) + \
        sum(p.grad.numel() * p.grad.element_size() for p in params) + \
        sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values() if v.dim() > 0)
    n = sum(p.numel() for p in params)
    assert measured == memory.per_rank_state_bytes(n, 1, 0, memory.bytes_per_param("fp32"))
    assert memory.bytes_per_param().total == 16 and memory.bytes_per_param(fp32_grads=True).total == 20
    sb = memory.bytes_per_param()
    assert [memory.per_rank_state_bytes(1, 4, k, sb) for k in range(4)] == [16, 4 + 3, 2 + 14 / 4, 4]


class GPTBlock(nn.Module):
    """Korthikanti et al.'s block: LayerNorm, attention with dropout, 4h GELU MLP, dropout."""

    def __init__(self, h: int, a: int, recompute: str = "none"):
        super().__init__()
        self.a, self.recompute = a, recompute
        self.ln1, self.ln2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.q, self.k, self.v, self.o = (nn.Linear(h, h) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(h, 4 * h), nn.Linear(4 * h, h)

    def core(self, q, k, v):
        b, s, h = q.shape
        q, k, v = (t.view(b, s, self.a, h // self.a).transpose(1, 2) for t in (q, k, v))
        p = F.dropout(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(h // self.a), -1), 0.1)
        return (p @ v).transpose(1, 2).reshape(b, s, h)

    def layer(self, x):
        y = self.ln1(x)
        q, k, v = self.q(y), self.k(y), self.v(y)
        if self.recompute == "selective":
            c = torch.utils.checkpoint.checkpoint(self.core, q, k, v, use_reentrant=True)
        else:
            c = self.core(q, k, v)
        x = x + F.dropout(self.o(c), 0.1)
        return x + F.dropout(self.fc2(F.gelu(self.fc1(self.ln2(x)))), 0.1)

    def forward(self, x):
        if self.recompute == "full":
            return torch.utils.checkpoint.checkpoint(self.layer, x, use_reentrant=True)
        return self.layer(x)


@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_activation_memory_matches_saved_tensors(recompute):
    s, b, h, a = 64, 2, 64, 4
    torch.manual_seed(0)
    block = GPTBlock(h, a, recompute).to(torch.bfloat16)
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    x = torch.randn(b, s, h, dtype=torch.bfloat16, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = block(x)  # forward only: a checkpoint's recomputation in backward is not kept memory
    y.float().sum().backward()
    measured = sum(seen.values())
    # eager CPU dropout stores its mask in bf16 (2 bytes), the paper assumes 1-byte masks
    predicted = activations.layer_activation_bytes(s, b, h, a, recompute=recompute, mask_bytes=2)
    assert abs(measured / predicted - 1) < 0.01, (measured, predicted)
    assert activations.layer_activation_bytes(s, b, h, a) == s * b * h * (34 + 5 * a * s / h)


def test_parallel_activation_forms():
    f = activations.layer_activation_bytes
    s, b, h, a = 2048, 1, 4096, 32
    assert f(s, b, h, a, tp=1) == f(s, b, h, a, tp=1, sequence_parallel=True)  # t=1: same
    assert f(s, b, h, a, tp=8, sequence_parallel=True) < f(s, b, h, a, tp=8)
    assert f(s, b, h, a, tp=8, sequence_parallel=True, recompute="selective") == s * b * h * 34 / 8
    with pytest.raises(ValueError):
        f(s, b, h, a, recompute="some")


def test_comm_bubble_roofline_chinchilla():
    assert comm.step_volume(1000, 2, 0) / comm.step_volume(1000, 2, 3) == pytest.approx(2 / 3)
    assert comm.collective_bytes("all_reduce", 100, 4) == 150
    assert pipeline.bubble_fraction(4, 8) == pytest.approx(3 / 11)
    assert pipeline.bubble_fraction(1, 8) == 0
    assert roofline.hfu(1, 6, 6, recompute=True) == pytest.approx(4 / 3)
    assert roofline.attainable_flops(roofline.matmul_intensity(1, 4096, 4096), 1e12, 1e11) < 1e12
    a, b = chinchilla.exponents()
    assert a == pytest.approx(0.452, abs=1e-3) and b == pytest.approx(0.548, abs=1e-3)  # notes: swapped
    p = chinchilla.plan(5.76e23)
    assert p["params"] == pytest.approx(3.22e10, rel=0.01) and p["tokens"] == pytest.approx(2.98e12, rel=0.01)
    assert 6 * p["params"] * p["tokens"] == pytest.approx(5.76e23)


def test_calc_cli_rejects_bad_layout():
    from llmlab.calc.commands import CalcConfig, report
    from llmlab.errors import UserError
    assert any("ZeRO-3" in k for k, _ in report(CalcConfig(depth=2)))
    with pytest.raises(UserError, match="does not divide"):
        report(CalcConfig(num_attention_heads=4, tp=3))
    with pytest.raises(UserError, match="pp=3"):
        report(CalcConfig(num_hidden_layers=4, pp=3))


def test_scaling_fit_recovers_a_known_surface():
    from llmlab.calc.fit import GRID, fit_loss_surface, optimal_split
    true = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
    pts = [{"params": n, "tokens": d, "val_loss": true["E"] + true["A"] / n ** 0.34 + true["B"] / d ** 0.28}
           for n in (1e6, 3e6, 1e7, 3e7, 1e8) for d in (1e8, 1e9, 1e10)]
    fit = fit_loss_surface(pts, starts=GRID[::9])  # a tenth of the CLI's 162-point grid
    assert fit["alpha"] == pytest.approx(0.34, abs=0.02) and fit["beta"] == pytest.approx(0.28, abs=0.02)
    n, d = optimal_split(fit, 5.76e23)
    assert 6 * n * d == pytest.approx(5.76e23, rel=1e-6)
    assert fit["a"] == pytest.approx(0.452, abs=0.03)


def test_calc_fit_bad_input(tmp_path):
    from llmlab.calc.commands import FitConfig, run_fit
    from llmlab.errors import UserError
    with pytest.raises(UserError, match="txt"):
        run_fit(FitConfig(data=str(tmp_path / "missing.txt")))
    small = tmp_path / "small.txt"
    small.write_text("too short")
    with pytest.raises(UserError, match="too little text"):
        run_fit(FitConfig(data=str(small)))
    with pytest.raises(UserError, match="at least 2"):
        run_fit(FitConfig(data=str(small), hidden_sizes=[16]))


def test_bubble_with_measured_stage_times_and_transfer():
    """Equal stages and no transfer time give the textbook (p-1)/(m+p-1); a hand-drawn GPipe timeline
    with stages of 1 s and 2 s per micro-batch and 0.5 s transfers gives the critical path
    1 + 2 + 0.5 + 0.5 + (m-1) * 2 = 10 s for m = 4, busy 4 and 8 s, bubble 1 - 6/10."""
    for p, m in ((2, 4), (4, 8), (1, 3)):
        assert pipeline.bubble_fraction_measured([0.3] * p, m) == pytest.approx(pipeline.bubble_fraction(p, m))
    assert pipeline.bubble_fraction_measured([1.0, 2.0], 4, 0.5) == pytest.approx(0.4)
    assert pipeline.bubble_fraction_measured([1.0, 1.0], 4, 0.1) > pipeline.bubble_fraction(2, 4)
    with pytest.raises(ValueError):
        pipeline.bubble_fraction_measured([1.0, 0.0], 4)
    # 0.5 s of runtime overhead per micro-batch on both stages of 1 s each: wall (1.5 + 1.5) + 3 * 1.5 = 7.5
    assert pipeline.bubble_fraction_measured([1.0, 1.0], 4, 0.0, 0.5) == pytest.approx(1 - 4 / 7.5)


def test_schedule_replay_matches_textbook_and_a_hand_drawn_timeline():
    """Equal stages (B = 2F) and no gaps: (p-1)/(m+p-1) for GPipe and 1F1B. Hand-drawn, p = 2, m = 2,
    F = (1, 2), B = (2, 4), hand-off 0.5: stage 0 runs F0 0-1, F1 1-2; stage 1 F0 1.5-3.5, F1 3.5-5.5,
    B0 5.5-9.5, B1 9.5-13.5 (GPipe); stage 0 B0 10-12, B1 14-16: a 16 s step, busy 6 and 12 s,
    bubble 1 - 9/16. 1F1B reorders stage 1 (F0 B0 F1 B1) and ends at 16 s too. A 0.25 s gap on
    stage 0 delays its F1 and its next step: 16.25 s."""
    for p, m in ((2, 4), (3, 8), (4, 1)):
        for s in ("gpipe", "1f1b"):
            assert pipeline.simulate_schedule([1.0] * p, [2.0] * p, m, s)[1] == pytest.approx(pipeline.bubble_fraction(p, m))
    for s in ("gpipe", "1f1b"):
        step, bubble = pipeline.simulate_schedule([1.0, 2.0], [2.0, 4.0], 2, s, handoff_s=0.5)
        assert (step, bubble) == pytest.approx((16.0, 1 - 9 / 16))
    assert pipeline.simulate_schedule([1.0, 2.0], [2.0, 4.0], 2, "gpipe", [0.25, 0.0], 0.5)[0] == pytest.approx(16.25)
    assert pipeline.schedule_order(2, 4, "1f1b")[0] == [("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1), ("F", 3),
                                                        ("B", 2), ("B", 3)]
    with pytest.raises(ValueError):
        pipeline.simulate_schedule([1.0], [0.0], 2)
    with pytest.raises(ValueError):
        pipeline.schedule_order(2, 2, "zb")


def test_timeline_inputs_recover_op_times_gaps_and_handoff():
    """The hand-drawn GPipe step above with a 0.25 s gap on stage 1: stage 1 runs F0 1.5-3.5, F1
    3.75-5.75, B0 6-10, B1 10.25-14.25; stage 0 F0 0-1, F1 1-2, B0 10.5-12.5, B1 14.75-16.75."""
    from llmlab.distributed.pipeline import timeline_inputs
    s0 = {"step": (0.0, 16.75), "ops": [("B", 14.75, 16.75), ("F", 0.0, 1.0), ("F", 1.0, 2.0), ("B", 10.5, 12.5)]}
    s1 = {"step": (0.0, 14.25), "ops": [("F", 1.5, 3.5), ("F", 3.75, 5.75), ("B", 6.0, 10.0), ("B", 10.25, 14.25)]}
    got = timeline_inputs([[s0, s0], [s1, s1]])
    assert got["forward_s"] == pytest.approx([1.0, 2.0]) and got["backward_s"] == pytest.approx([2.0, 4.0])
    assert got["gap_s"] == pytest.approx([0.0, 0.25]) and got["handoff_s"] == pytest.approx(0.5)
    step, _ = pipeline.simulate_schedule(got["forward_s"], got["backward_s"], 2, "gpipe", got["gap_s"], got["handoff_s"])
    assert step == pytest.approx(16.75)  # the replay reproduces the drawn step
