"""Decode attention in C (`attention.c`): one new query per sequence, keys and values read in
place from the KV cache by slot, no gathers, no padding. Used by `llmlab.infer.runner` for
decode steps (paged and contiguous caches) where the library builds; torch's SDPA otherwise.

softmax(q K^T / sqrt(D)) V per (sequence, head) (Vaswani et al. 2017), grouped-query heads as
torch's `enable_gqa`; tested against F.scaled_dot_product_attention.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

import torch

from llmlab.kernels import build

SRC = Path(__file__).with_name("attention.c")
_LIB: list = []


def _open_library():
    if build.load() is None:  # same switches as the block kernel (LLMLAB_NO_KERNELS, ISA)
        return None
    lib = ctypes.CDLL(str(build.build(SRC)))
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.llmlab_decode_attention.argtypes = [p, p, p, i64, i64, p, p, i64, i64, i64, i64,
                                            ctypes.c_float, p, ctypes.c_int, i64]
    lib.llmlab_decode_attention.restype = None
    lib.llmlab_decode_attention_one.argtypes = [p, p, p, i64, i64, p, i64, i64, i64, ctypes.c_float, p, i64]
    lib.llmlab_decode_attention_one.restype = None
    lib.llmlab_attention_fast.argtypes = [ctypes.c_int]  # the AVX2 path off/on (its test); 0: not built
    lib.llmlab_attention_fast.restype = ctypes.c_int
    lib.llmlab_attention_exp_check.argtypes = [p, i64, p, p]  # its test: the 8-lane e^x = the scalar one
    lib.llmlab_attention_exp_check.restype = ctypes.c_int
    lib.llmlab_attention_fast(level())
    return lib


def level() -> int:
    """The AVX2 path's level where it is compiled in: 2 (default), the scores 4 keys at a time and the
    softmax on 8 lanes; 1 with LLMLAB_C_ATTN_VEC=0 (session 14's path, the A/B arm). The same bits."""
    return 2 if os.environ.get("LLMLAB_C_ATTN_VEC", "1") not in ("", "0") else 1


def load():
    """The compiled library, or None (no compiler, LLMLAB_NO_KERNELS=1): callers use SDPA."""
    return build.load_cached(_LIB, _open_library, "C decode attention unavailable, using SDPA")


SPLIT = 512  # keys per Flash-Decoding chunk: longer sequences are split across threads


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, Hkv: int, s_pos: int, s_head: int,
                     slots: torch.Tensor, offs: torch.Tensor, threads: int = 1, split: int = SPLIT) -> torch.Tensor:
    """q (B, H, D) fp32; k, v: a layer's cache (fp32, contiguous), K/V head g of slot s at element
    s * s_pos + g * s_head;
    slots (int64): every sequence's key slots in order, concatenated; offs (B + 1,) int64 offsets
    into slots -> (B, H, D).
    split (Flash-Decoding, Dao et al. 2023): a sequence with more keys is computed as chunks of
    `split` keys, each its own work item for the threads, merged by log-sum-exp (0 = never). Its
    bits depend only on its own length, not on the batch or the thread count."""
    lib = load()
    if lib is None:
        raise RuntimeError("the C decode attention is not available")
    q = q.contiguous()
    B, H, D = q.shape
    if q.dtype != torch.float32 or k.dtype != torch.float32 or not (k.is_contiguous() and v.is_contiguous()):
        raise ValueError("decode_attention needs fp32 q and contiguous fp32 caches")
    if slots.dtype != torch.int64 or offs.dtype != torch.int64 or offs.numel() != B + 1 or H % Hkv:
        raise ValueError("decode_attention: bad slots/offsets or head counts")
    out = torch.empty_like(q)
    lib.llmlab_decode_attention(q.data_ptr(), k.data_ptr(), v.data_ptr(), s_pos, s_head, slots.data_ptr(),
                                offs.data_ptr(), B, H, Hkv, D, D ** -0.5, out.data_ptr(), threads, split)
    return out
