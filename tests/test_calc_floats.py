"""fp32/fp16/bf16 layouts against torch.finfo and hand-written bit patterns."""
from __future__ import annotations

import pytest
import torch

from llmlab.calc.floats import bits, layout


@pytest.mark.parametrize("name,dtype", [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_limits_equal_finfo(name, dtype):
    f, lay = torch.finfo(dtype), layout(name)
    assert (lay["max"], lay["smallest_normal"], lay["eps"]) == (f.max, f.tiny, f.eps)
    assert lay["bits"] == f.bits


def test_bit_patterns_by_hand():
    assert bits(1.0, "bf16") == "0 01111111 0000000"
    assert bits(-2.0, "fp16") == "1 10000 0000000000"
    assert bits(1.0, "fp32")[:10] == "0 01111111"
    assert bits(3.0e38, "fp16") == "0 11111 0000000000"  # overflow to inf in fp16
    assert bits(1e-8, "fp16") == "0 00000 0000000000"  # underflow to 0: why fp16 needs loss scaling
    assert bits(1e-8, "bf16") != "0 00000000 0000000"  # bf16 keeps it (fp32's exponent range)
    assert bits(1.0 + 2 ** -8, "bf16") == bits(1.0, "bf16")  # under half an ulp (eps 2^-7): lost
