"""Device, dtype and thread setup, and the oneDNN decision, in one place.

CPU torch slows down ~10x when threads outnumber free cores, so we never use more threads
than the cores this process may run on.
"""
from __future__ import annotations

import contextlib
import os

import torch

from llmlab.errors import UserError

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
           "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def setup_threads(num_threads: int | None = None) -> int:
    """Use at most the available cores (or `num_threads`, if smaller); returns the count."""
    n = available_cores()
    if num_threads:
        n = min(n, num_threads)
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit() and not num_threads:
        n = min(n, int(env))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


@contextlib.contextmanager
def num_threads(n: int):
    """Run the block with n intra-op threads (torch's setting is global; restored after)."""
    old = torch.get_num_threads()
    if n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


_ONEDNN: list = [None]  # probed once per process


def use_onednn() -> bool:
    """Whether fp32 CPU matmuls may go through oneDNN (training linears, packed inference weights):
    it is in this torch build, its linear op works, and LLMLAB_NO_DNN is not set (=1 turns it off)."""
    if _ONEDNN[0] is None:
        ok = (os.environ.get("LLMLAB_NO_DNN", "") in ("", "0") and torch.backends.mkldnn.is_available()
              and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
        if ok:
            try:
                x, w = torch.randn(4, 8), torch.randn(3, 8)
                got = torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
                ok = torch.allclose(got, torch.nn.functional.linear(x, w), atol=1e-5)
            except RuntimeError:  # an op this build lacks
                ok = False
        _ONEDNN[0] = ok
    return _ONEDNN[0]


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX): only then does bf16
    autocast train faster than fp32 on CPU (1.31x for the speedrun's model here, docs/LOG.md issue
    24); without it torch emulates bf16 and fp32 is the fast path. LLMLAB_NO_BF16=1 turns it off."""
    if os.environ.get("LLMLAB_NO_BF16", "") not in ("", "0"):
        return False
    cpu = getattr(torch, "cpu", None)
    probes = [getattr(cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(p()) for p in probes if p is not None)
    except RuntimeError:
        return False


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but CUDA is not available")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' is fp32 on CPU (bf16 matmuls are ~100x slower there) and bf16 on GPUs that support it."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in _DTYPES:
        raise UserError(f"unknown dtype '{name}'; use one of auto, {', '.join(sorted(_DTYPES))}")
    return _DTYPES[name]
