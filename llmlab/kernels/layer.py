"""Every decoder layer of a decode step in one C call (`layer.c`): RMSNorm, RoPE, the KV-cache
write, SwiGLU and the residual adds in C; the products and the attention through the block
kernel's and the C attention's own functions (same bits as when Python calls them).

Why: a layer in Python is ~25 tensor ops plus 4 ctypes calls; at batch 1 their dispatch is about
a third of a token's time (docs/infer.md, "Breakdown"). Used by `llmlab.infer.runner` for decode
steps of LLaMA-style models whose every matrix has GGUF blocks; the Python path otherwise, or
with LLMLAB_C_LAYERS=0. Not bit-equal to the Python path (torch's norm and SiLU sum and round
differently): tests/test_kernels_layer.py bounds the difference, for every ISA build.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

import torch

from llmlab.kernels import attention as c_attention
from llmlab.kernels import build, ggml

SRC = Path(__file__).with_name("layer.c")
_LIB: list = []
NF = 42  # int64 fields per layer (layer.c)
# the pieces `Layers.profile` times, in layer.c's order (its enum P_*)
PIECES = ("norms (RMSNorm)", "matmul qkv", "rotary + KV cache writes", "attention (C decode kernel)", "matmul o",
          "residual adds + SiLU*up", "matmul gate_up", "matmul down", "matmul lm_head + final norm + argmax")


def _open_library(arch: str | None = None):
    lib = ctypes.CDLL(str(build.build(SRC, arch)))
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.llmlab_decode_layers.argtypes = [i64, p, p, p, p, i64, i64, i64, i64, i64, i64, p, p, ctypes.c_float,
                                         i64, i64, p, p, p, p, p, i64, i64, i64, p, p, ctypes.c_int, p, p, p, p]
    lib.llmlab_decode_layers.restype = ctypes.c_int
    lib.llmlab_omp_probe.argtypes = [ctypes.c_int, i64, ctypes.c_double, p]
    lib.llmlab_omp_probe.restype = None
    lib.llmlab_silu_check.argtypes = [p, p, p, i64, ctypes.c_int]  # its test: the 8-lane SiLU = the scalar one
    lib.llmlab_silu_check.restype = ctypes.c_int
    return lib


def load():
    """The compiled library, or None (no compiler, LLMLAB_NO_KERNELS=1)."""
    if build.load() is None or c_attention.load() is None:
        return None
    return build.load_cached(_LIB, _open_library, "C decoder layers unavailable, using the Python path")


def enabled() -> bool:
    return os.environ.get("LLMLAB_C_LAYERS", "1") not in ("", "0")


def team_mode(rows: int, threads: int) -> bool:
    """Does a call with this many input rows and threads run every layer in one parallel region
    (layer.c's `layers_team`)? One row, more than one thread, unless LLMLAB_C_TEAM=0 (the A/B arm)."""
    return rows == 1 and threads > 1 and os.environ.get("LLMLAB_C_TEAM", "1") not in ("", "0")


def query_split() -> bool:
    """Does team mode share the attention out by query heads (an even split; LLMLAB_C_QSPLIT,
    default on) rather than by K/V heads (SmolLM2's 3 over 2 threads: 2 and 1)?"""
    return os.environ.get("LLMLAB_C_QSPLIT", "1") not in ("", "0")


def fast_silu() -> bool:
    """SiLU*up through Cephes' polynomial e^x inline (exp_poly.h, ~1e-7 relative) rather than a call
    of libm's expf per value (LLMLAB_C_FAST_SILU, default on: 2.5 % off a 2-thread step, docs/infer.md)."""
    return os.environ.get("LLMLAB_C_FAST_SILU", "1") not in ("", "0")


def silu_vec() -> bool:
    """With `fast_silu`: SiLU*up on 8 lanes where AVX2 is built in (LLMLAB_C_SILU_VEC, default on; the same
    bits as the scalar loop, layer.c's `silu_vec`)."""
    return os.environ.get("LLMLAB_C_SILU_VEC", "1") not in ("", "0")


def attention_one() -> bool:
    """Does team mode call the one-sequence attention entry (`llmlab_decode_attention_one`: no work
    lists, mallocs or nested region a call; the same bits) rather than `llmlab_decode_attention`
    (LLMLAB_C_ATTN_ONE, default on; 0: the general entry)? -0.9 % of a quiet 2-thread int8 step in session 14
    (its rule >= 1 %: then off), -1.6 % on session 15's defaults (docs/LOG.md)."""
    return os.environ.get("LLMLAB_C_ATTN_ONE", "1") not in ("", "0")


def head_in_c() -> bool:
    """Do one-row C steps run the final norm and the LM head in the same call (LLMLAB_C_HEAD, default on)?"""
    return os.environ.get("LLMLAB_C_HEAD", "1") not in ("", "0")


def _addr(fn) -> int:
    return ctypes.cast(fn, ctypes.c_void_p).value


class Layers:
    """A FusedModel's (`llmlab.infer.fused`) layers as the int64 table `layer.c` reads; `of(w)` builds it once, or None
    where the model is not LLaMA-style with blocks everywhere (then callers run Python).
    profile: None, or a float64 tensor (len(PIECES),) that every run adds its pieces' seconds to
    (benchmarks/_inference_profile.py)."""
    profile: torch.Tensor | None = None
    last_team = False  # did the last run use team mode (layer.c's layers_team)?

    def __init__(self, w, table: torch.Tensor, eps: float, head: torch.Tensor | None = None):
        self.w, self.table, self.eps, self.head = w, table, eps, head
        self.head_rows = 0 if head is None else int(head[4])
        self._t16: tuple | None = None  # (table, head) with fp16 scales for the int8 kernel (`tables`)
        L0 = w.layers[0]
        self.ffn = L0.down_w.q.k
        self._fns: dict = {}
        self._lnt: dict = {}

    def fns(self, int8: bool, head: bool = False) -> torch.Tensor:
        """The function pointers layer.c calls: block matmul, int8 matmul or 0, attention, the
        one-sequence attention or 0 (`attention_one`) (cached)."""
        key = (int8, head, attention_one())
        if key not in self._fns:
            att = c_attention.load()
            self._fns[key] = torch.tensor([_addr(build.load().llmlab_ggml_matmul),
                                           _addr(build.load_i8().llmlab_i8_matmul) if int8 else 0,
                                           _addr(att.llmlab_decode_attention),
                                           _addr(att.llmlab_decode_attention_one) if key[2] else 0], dtype=torch.int64)
        return self._fns[key]

    def tables(self, int8: bool, int8_head: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(layer table, head row) for a call: where the int8 kernel runs and `ggml.f16_scales()`, the
        matrices whose scales fp16 holds exactly point at their fp16 copies (fmt | F16S); same bits."""
        if not ggml.f16_scales() or not (int8 or int8_head):
            return self.table, self.head
        if self._t16 is None:
            t, h = self.table.clone(), None if self.head is None else self.head.clone()
            for li, L in enumerate(self.w.layers):
                for mi, m in enumerate((L.qkv_w, L.o_w, L.up_w, L.down_w)):
                    self._halve(t[li, 6 * mi:6 * mi + 4], m.q)
            if h is not None:
                self._halve(h[:4], self.w.head_w.q)
            self._t16 = (t, h)
        return self._t16[0] if int8 else self.table, self._t16[1] if int8_head else self.head

    @staticmethod
    def _halve(f: torch.Tensor, q) -> None:
        """fields fmt, qs, d, m of one matrix -> its fp16-scale form, where it has one"""
        h = q.half_scales()
        if h is not None:
            f[0], f[2], f[3] = q.fmt | ggml.F16S, h[0].data_ptr(), 0 if h[1] is None else h[1].data_ptr()

    @classmethod
    def of(cls, w) -> "Layers | None":
        if "_c_layers" in w.__dict__:
            return w.__dict__["_c_layers"]
        w._c_layers = out = cls._build(w)
        return out

    @classmethod
    def _build(cls, w):
        if load() is None or w.rope is None or w.pos_embed is not None or w.embed.dtype != torch.float32:
            return None
        rows, eps = [], set()
        for L in w.layers:
            mats = (L.qkv_w, L.o_w, L.up_w, L.down_w)
            blocks = all(isinstance(getattr(m, "q", None), ggml.QuantWeight) for m in mats)  # QLinear
            if not (L.swiglu and blocks and L.n1[0] == 0 and L.n2[0] == 0):  # SwiGLU, RMSNorm, blocks
                return None
            row = []
            for m in mats:
                q = m.q
                row += [q.fmt, q.qs.data_ptr(), q.d.data_ptr(), 0 if q.m is None else q.m.data_ptr(), q.rows, q.k]
            row += [0 if b is None else b.contiguous().data_ptr() for b in (L.qkv_b, L.o_b, L.up_b, L.down_b)]
            row += [L.n1[1].contiguous().data_ptr(), L.n2[1].contiguous().data_ptr()]
            for m in mats:  # one weight row's strides: qs bytes, d and m floats (team mode's row ranges)
                q = m.q
                row += [q.qs.stride(0) * q.qs.element_size(), q.d.stride(0), 0 if q.m is None else q.m.stride(0)]
            eps |= {L.n1[2], L.n2[2]}
            rows.append(row)
        if len(eps) != 1 or any(b is not None and not b.is_contiguous() for L in w.layers
                                for b in (L.qkv_b, L.o_b, L.up_b, L.down_b, L.n1[1], L.n2[1])):
            return None
        e = eps.pop()
        return cls(w, torch.tensor(rows, dtype=torch.int64), e, cls._head(w, e))

    @staticmethod
    def _head(w, eps: float) -> torch.Tensor | None:
        """The LM head's row (layer.c's H_* fields) where it has blocks and the final norm is an
        RMSNorm with the layers' eps; else None (the head runs in Python)."""
        q, n, b = getattr(w.head_w, "q", None), w.norm, w.head_b
        if not isinstance(q, ggml.QuantWeight) or n[0] != 0 or n[2] != eps or (b is not None and not b.is_contiguous()):
            return None
        return torch.tensor([q.fmt, q.qs.data_ptr(), q.d.data_ptr(), 0 if q.m is None else q.m.data_ptr(), q.rows, q.k,
                             0 if b is None else b.data_ptr(), n[1].contiguous().data_ptr(),
                             q.qs.stride(0) * q.qs.element_size(), q.d.stride(0), 0 if q.m is None else q.m.stride(0)],
                            dtype=torch.int64)

    def run(self, x: torch.Tensor, rope, k_ptrs: torch.Tensor, v_ptrs: torch.Tensor, s_pos: int, s_head: int,
            wslots: torch.Tensor, slots: torch.Tensor, offs: torch.Tensor, threads,
            layer_seconds: torch.Tensor | None = None, head: tuple | None = None) -> torch.Tensor:
        """x (M, d) fp32 -> x after every layer (in place); rope: (cos, sin) as from embed_rows;
        k_ptrs/v_ptrs (layers,) int64: each layer's cache; wslots (M,): where each row's k, v go;
        slots/offs: every row's key slots, as `attention.decode_attention` takes them; threads: a
        count, or one per layer; layer_seconds: None, or float64 (layers,) that gets each layer's time;
        head: None, or (logits (V,) fp32, argmax (1,) int64) for one row where `self.head` exists:
        the final norm, the LM head and the argmax in the same call (the whole step's forward)."""
        w, lib = self.w, load()
        x = x.contiguous()
        M = x.shape[0]
        cos, sin = (t.reshape(M, -1).contiguous() for t in rope)
        simd = ggml.int8_simd()
        i8, i8h = ggml.int8_activations() and simd, ggml.int8_head() and simd
        fns, hfns = self.fns(i8), self.fns(i8h, True)
        table, head_row = self.tables(i8, i8h)
        nl = len(w.layers)
        if head is not None and (M != 1 or self.head is None):
            raise ValueError("the C head runs for one row of a model whose head has blocks (Layers.head)")
        key = tuple(threads) if isinstance(threads, (list, tuple)) else (threads,) * nl
        lnt = self._lnt.get(key)
        if lnt is None:  # per thread pattern, made once (a handful: the tuner's picks)
            lnt = self._lnt[key] = torch.tensor(key, dtype=torch.int32)
        rc = lib.llmlab_decode_layers(len(w.layers), table.data_ptr(), k_ptrs.data_ptr(), v_ptrs.data_ptr(),
                                      x.data_ptr(), M, x.shape[1], w.H, w.Hkv, w.D, self.ffn, cos.data_ptr(),
                                      sin.data_ptr(), self.eps, s_pos, s_head, wslots.data_ptr(), slots.data_ptr(),
                                      offs.data_ptr(), fns.data_ptr(), lnt.data_ptr(), ggml.PARALLEL_MACS,
                                      ggml.PARALLEL_MACS_INT8, c_attention.SPLIT,
                                      None if self.profile is None else self.profile.data_ptr(),
                                      None if layer_seconds is None else layer_seconds.data_ptr(),
                                      int(team_mode(M, max(key))) | query_split() << 1 | fast_silu() << 2
                                      | silu_vec() << 3,
                                      None if head is None else head_row.data_ptr(),
                                      hfns.data_ptr(), None if head is None else head[0].data_ptr(),
                                      None if head is None else head[1].data_ptr())
        if rc == 1:
            raise MemoryError("decode layers: out of memory")
        self.last_team = rc == 2  # every layer ran in one parallel region (team_mode)
        return x
