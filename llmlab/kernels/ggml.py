"""GGUF block-quantized weights (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K) kept as blocks, and their matmul.

A GGUF loaded by `llmlab.model.gguf_io` becomes fp32 parameters (training, export and every
reference check use those), and its quantized matrices are also kept here, repacked for the C
kernel (`kernel.py`, `ggml_matmul.c`): nibbles or int8 in one array, fp32 scales d and offsets
m in two more. The kernel multiplies with exactly the fp32 weights the model holds (same bits:
checked on every build by `QuantWeight.check`), it just reads ~5x fewer bytes to get them.

Formats (ggml's `ggml-quants.c`), 32 weights per block:
  Q4_0: fp16 d, 16 B nibbles     w = d * (q - 8)   stored as q4 with m = -8d (exact)
  Q4_1: fp16 d, fp16 m, 16 B     w = d * q + m
  Q8_0: fp16 d, 32 int8          w = d * q
K-quants (ggml's `block_q4_K` ...), 256-weight super-blocks of sub-blocks with integer scales;
repacked per sub-block into the forms above, with d = d_super * scale and m = -dmin * min
(both exact in fp32, the products gguf.quants.dequantize forms):
  Q4_K: 8 x 32, 6-bit scale and min    -> fmt 4 (nibbles, d, m)
  Q5_K: 8 x 32, 5-bit q                -> fmt 5 (int8 q, d, m per 32)
  Q6_K: 16 x 16, int8 scale, q - 32    -> fmt 6 (int8 q, d per 16)
The repacked forms read more bytes than the file's (Q4_K 0.75 vs 0.5625 B/weight) but reuse one
dequantize-into-L1 kernel for every format.
"""
from __future__ import annotations

import os

import torch

from llmlab.kernels import build as kernel

QK = 32
QK_K = 256
_RAW = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}
_BLOCK = {"Q4_K": QK_K, "Q5_K": QK_K, "Q6_K": QK_K}  # weights per stored block (else QK)
FORMATS = tuple(_RAW)


def _group(fmt: int) -> int:
    return 16 if fmt == 6 else QK


def _f16(b: torch.Tensor, lo: int) -> torch.Tensor:
    return b[..., lo:lo + 2].contiguous().view(torch.float16)[..., 0].float()


def _k_scales(sc12: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's 12 packed bytes -> 8 six-bit scales and 8 six-bit mins (ggml's get_scale_min_k4)."""
    s = sc12.reshape(*sc12.shape[:-1], 3, 4)
    d, m, md = s[..., 0, :], s[..., 1, :], s[..., 2, :]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def _kquant(qtype: str, b: torch.Tensor, rows: int):
    """b (rows, n super-blocks, bytes) -> (fmt, qs, d, m) in the repacked forms."""
    n = b.shape[1]
    if qtype == "Q6_K":
        ql, qh = b[..., :128].reshape(rows, n, 2, 1, 64), b[..., 128:192].reshape(rows, n, 2, 1, 32)
        ql = (ql >> torch.tensor([0, 4], dtype=torch.uint8).view(2, 1)) & 0x0F  # (rows, n, 2, 2, 64)
        qh = (qh >> torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(4, 1)) & 0x03  # (rows, n, 2, 4, 32)
        q = (ql.reshape(rows, n, 8, 32) | (qh.reshape(rows, n, 8, 32) << 4)).view(torch.int8) - 32
        d = _f16(b, 208)[..., None] * b[..., 192:208].contiguous().view(torch.int8).float()
        return 6, q.reshape(rows, -1), d.reshape(rows, -1), None
    sc, mn = _k_scales(b[..., 4:16])
    d = (_f16(b, 0)[..., None] * sc.float()).reshape(rows, -1)
    m = (-(_f16(b, 2)[..., None] * mn.float())).reshape(rows, -1)
    qs = b[..., 16:144] if qtype == "Q4_K" else b[..., 48:176]
    qs = qs.reshape(rows, n, 4, 1, 32) >> torch.tensor([0, 4], dtype=torch.uint8).view(2, 1)
    q = (qs & 0x0F).reshape(rows, n, 8, 32)  # sub-block j of a super-block: weights 32j..32j+31
    if qtype == "Q4_K":  # our nibble order: byte i holds weights i and i + 16 of a sub-block
        return 4, (q[..., :16] | (q[..., 16:] << 4)).reshape(rows, -1), d, m
    hi = (b[..., 16:48].reshape(rows, n, 1, 32) >> torch.arange(8, dtype=torch.uint8).view(8, 1)) & 1
    return 5, (q | (hi << 4)).view(torch.int8).reshape(rows, -1), d, m


class QuantWeight:
    """A (rows, k) weight in block form: fmt 4 (qs: rows x nb x 16 nibble bytes, d, m), 8
    (qs: rows x nb x 32 int8, d; m None), 5 (int8 per 32, d, m) or 6 (int8 per 16, d; m None).
    d, m: fp32 (rows, groups); qs: uint8/int8 (rows, bytes)."""

    __slots__ = ("fmt", "qs", "d", "m", "rows", "k", "_h16")

    def __init__(self, fmt: int, qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None):
        self.fmt, self.qs, self.d, self.m = fmt, qs.contiguous(), d.contiguous(), None if m is None else m.contiguous()
        self.rows, nb = d.shape
        self.k = nb * _group(fmt)
        self._h16: tuple | None | bool = False  # half_scales(), made on first use

    def half_scales(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """fp16 copies of d (and m) for the int8 kernel's F16S form, where fp16 holds every value
        exactly (Q4_0, Q4_1, Q8_0: the file's own fp16 scales; not the K-quants' products), else None.
        Made once: a Q4_1 block then streams 20 bytes instead of 24, with the same fp32 values."""
        if self._h16 is False:
            h = None
            if self.fmt in (4, 8):
                d16, m16 = self.d.half(), None if self.m is None else self.m.half()
                if torch.equal(d16.float(), self.d) and (m16 is None or torch.equal(m16.float(), self.m)):
                    h = (d16, m16)
            self._h16 = h
        return self._h16

    @classmethod
    def from_gguf(cls, qtype: str, raw: torch.Tensor, shape: tuple[int, int]) -> "QuantWeight":
        """raw: the tensor's bytes (uint8) as stored in the file; shape: (rows, k) torch order."""
        rows, k = shape
        block = _BLOCK.get(qtype, QK)
        if qtype not in _RAW or k % block:
            raise ValueError(f"cannot keep {qtype} {shape} as blocks")
        b = raw.view(rows, k // block, _RAW[qtype])
        if block == QK_K:
            return cls(*_kquant(qtype, b, rows))
        f16 = lambda lo: _f16(b, lo)  # noqa: E731
        if qtype == "Q8_0":
            return cls(8, b[..., 2:], f16(0), None)
        if qtype == "Q4_1":
            return cls(4, b[..., 4:], f16(0), f16(2))
        d = f16(0)
        return cls(4, b[..., 2:], d, -8.0 * d)

    def index_rows(self, idx: torch.Tensor) -> "QuantWeight":
        return QuantWeight(self.fmt, self.qs[idx], self.d[idx], None if self.m is None else self.m[idx])

    @staticmethod
    def cat(parts: list["QuantWeight"]) -> "QuantWeight | None":
        """Rows of several weights stacked (fused q/k/v, gate/up); None if their formats differ."""
        if len({(p.fmt, p.k) for p in parts}) != 1:
            return None
        m = None if parts[0].m is None else torch.cat([p.m for p in parts])
        return QuantWeight(parts[0].fmt, torch.cat([p.qs for p in parts]), torch.cat([p.d for p in parts]), m)

    def dequantize(self) -> torch.Tensor:
        """fp32 (rows, k): the weights exactly as the kernel uses them."""
        if self.fmt != 4:
            q = self.qs.view(torch.int8).reshape(self.rows, -1, _group(self.fmt)).float()
            w = self.d[..., None] * q if self.m is None else torch.addcmul(self.m[..., None], self.d[..., None], q)
        else:
            qs = self.qs.reshape(self.rows, -1, 16)
            q = torch.cat([qs & 0x0F, qs >> 4], dim=-1).float()
            w = torch.addcmul(self.m[..., None], self.d[..., None], q)
        return w.reshape(self.rows, self.k)

    def check(self, w: torch.Tensor, rows: int = 4) -> bool:
        """Do the first and last rows decode to exactly `w`'s rows (the model's fp32 weight)?"""
        if tuple(w.shape) != (self.rows, self.k):
            return False
        idx = torch.tensor(sorted({0, self.rows - 1, *range(min(rows, self.rows))}))
        return torch.equal(self.index_rows(idx).dequantize(), w.detach()[idx].float())

    @property
    def nbytes(self) -> int:
        return self.qs.numel() + 4 * self.d.numel() + (0 if self.m is None else 4 * self.m.numel())


def available() -> bool:
    return kernel.load() is not None


# Smaller calls run on one thread (a second costs a wake-up, and on a busy machine a time slice).
# From 250k a batch-1 step's q/k/v, o, gate/up and down follow the thread count the thread tuner
# measured best for their layer (llmlab.infer.threads: 1 under load, 2 where the second core is
# free); at 2M (sessions 4-9) they always ran on one core and only the LM head split, so batch-1
# decode used one of two free cores for its layers. LLMLAB_PARALLEL_MACS overrides (an A/B).
PARALLEL_MACS = int(os.environ.get("LLMLAB_PARALLEL_MACS", "") or 250_000)
# int8-activation calls stream the weights at the memory's speed (docs/infer.md), so a second core
# pays from smaller calls on: a batch-1 step's q/k/v, gate/up and down split their rows
PARALLEL_MACS_INT8 = 500_000


def has_gemm() -> bool:
    """Is the many-rows GEMM path compiled in (AVX-512 builds)? On AVX2 a 6 x 16 tile of it ran
    slower than the few-rows path at 512 rows (docs/LOG.md, session 9), so it has none."""
    lib = kernel.load()
    return lib is not None and lib.llmlab_ggml_simd() >= 3


def int8_activations() -> bool:
    """LLMLAB_INT8_ACTIVATIONS=1: decode products quantize activations to int8 per 32-block and
    multiply Q4/Q8 blocks with integer dot products (llama.cpp's scheme; `ggml_i8.c`). Faster,
    not exact (accuracy: docs/infer.md); other formats, or a CPU without SIMD int8 dot products
    (`int8_isa()` "portable"), stay on the exact path."""
    return os.environ.get("LLMLAB_INT8_ACTIVATIONS", "") not in ("", "0")


def int8_head() -> bool:
    """LLMLAB_INT8_HEAD=1: int8 activations for the LM head only (the layers stay exact): the head
    is ~30 % of an exact batch-1 step on AVX2 (4.8 vs 3.2 ms int8; accuracy: docs/infer.md). Implied
    by LLMLAB_INT8_ACTIVATIONS=1."""
    return int8_activations() or os.environ.get("LLMLAB_INT8_HEAD", "") not in ("", "0")


_I8_ISA = {3: "avx512vnni", 2: "avx2", 0: "portable"}


def int8_isa() -> str | None:
    """The instruction set the int8-activation library was built for ("avx512vnni", "avx2",
    "portable"), or None where it cannot be built. Every build gives the same bits."""
    lib = kernel.load_i8()
    return None if lib is None else _I8_ISA[lib.llmlab_i8_isa()]


def int8_simd() -> bool:
    """Does `LLMLAB_INT8_ACTIVATIONS=1` take effect here: the int8 library builds with SIMD integer
    dot products (AVX-512 VNNI or AVX2's maddubs/madd; not the portable build, which would be slower
    than the exact path)? The one test of it for the products, the C layers and the tests."""
    return int8_isa() not in (None, "portable")


F16S = 16  # ggml_i8.c's fmt flag: d and m are fp16


def f16_scales() -> bool:
    """Does the int8 kernel read the blocks' scales as fp16 where that is exact (`QuantWeight.half_scales`;
    LLMLAB_I8_F16_SCALES, default on; 0 reads fp32 copies)? Same bits either way; 17 % fewer bytes a Q4_1
    block. On the quiet AVX2 EPYC: -2.0 % of a 2-thread int8 step in session 14 (its rule >= 2 %: then off),
    -4.1 % (and -1.2 % at 1 thread) on session 15's defaults (non-temporal prefetch; docs/LOG.md)."""
    return os.environ.get("LLMLAB_I8_F16_SCALES", "1") not in ("", "0")


def _args(w: QuantWeight) -> tuple:
    return (w.fmt, w.qs.data_ptr(), w.d.data_ptr(), 0 if w.m is None else w.m.data_ptr(), w.rows, w.k)


def args_i8(w: QuantWeight, f16: bool | None = None) -> tuple:
    """`_args` for the int8 kernel: with fp16 scales (fmt | F16S) where `f16` (default `f16_scales()`)
    and `w.half_scales()` exist."""
    h = w.half_scales() if (f16_scales() if f16 is None else f16) else None
    if h is None:
        return _args(w)
    return (w.fmt | F16S, w.qs.data_ptr(), h[0].data_ptr(), 0 if h[1] is None else h[1].data_ptr(), w.rows, w.k)


def matmul_i8(x: torch.Tensor, w: QuantWeight, threads: int = 1, lib=None, f16: bool | None = None) -> torch.Tensor | None:
    """x (M, k) fp32 -> x @ W.T with int8 activations (see `ggml_i8.c` for the exact order of
    operations); None where the format has no int8 form (Q5_K, Q6_K) or the library is missing.
    lib: a library from `build.open_i8(arch)` (tests compare builds); default the native one.
    f16: read the scales as fp16 (`args_i8`; default `f16_scales()`): the same bits."""
    lib = lib or kernel.load_i8()
    if lib is None or w.fmt not in (4, 8):
        return None
    x = x.contiguous()
    y = torch.empty(x.shape[0], w.rows)
    if not lib.llmlab_i8_matmul(*args_i8(w, f16), x.data_ptr(), x.shape[0], y.data_ptr(), threads):
        return None
    return y


def matmul(x: torch.Tensor, w: QuantWeight, bias: torch.Tensor | None = None, gemm: bool = False,
           int8: bool | None = None) -> torch.Tensor:
    """x (M, k) fp32 on CPU -> x @ W.T (+ bias), (M, rows). Each output row is computed the same
    way whatever M is and however many threads run (batch invariant). Threads: torch's count
    (its OpenMP pool), for calls of at least PARALLEL_MACS multiply-adds. gemm: the register-tiled
    path for many rows (prefill; `has_gemm()`), itself batch invariant but not bit-equal to the
    default path, so a caller uses one of them per kind of step. int8 (default: the
    LLMLAB_INT8_ACTIVATIONS switch): int8 activations for Q4/Q8 blocks on a non-GEMM call, where
    the CPU has SIMD int8 dot products."""
    lib = kernel.load()
    if lib is None:
        raise RuntimeError("the quantized-weight kernel is not available")
    x = x.contiguous()
    if x.dtype != torch.float32 or x.dim() != 2 or x.shape[-1] != w.k:
        raise ValueError(f"x must be fp32 (M, {w.k}); got {tuple(x.shape)} {x.dtype}")
    M = x.shape[0]
    nt = torch.get_num_threads() if M * w.rows * w.k >= PARALLEL_MACS else 1
    if not gemm and (int8_activations() if int8 is None else int8) and int8_simd():
        y = matmul_i8(x, w, torch.get_num_threads() if M * w.rows * w.k >= PARALLEL_MACS_INT8 else 1)
        if y is not None:
            return y if bias is None else y.add_(bias)
    y = torch.empty(M, w.rows)
    run = lib.llmlab_ggml_gemm if gemm else lib.llmlab_ggml_matmul
    if run(*_args(w), x.data_ptr(), M, y.data_ptr(), nt) == 0 and gemm:
        raise RuntimeError("the GEMM path is not compiled in (needs AVX-512; see has_gemm())")
    return y if bias is None else y.add_(bias)


def _stamp(p: torch.Tensor) -> tuple:
    try:
        return (p.data_ptr(), p._version)
    except RuntimeError:  # an inference tensor has no version counter
        return (p.data_ptr(), 0)


def attach(model, blocks: dict[str, QuantWeight]) -> None:
    """Keep block-quantized copies of a model's weights (name -> QuantWeight) with a stamp of
    each fp32 parameter as loaded; `blocks_for` hands one out only while that parameter is
    unchanged (training, LoRA merges or .to() invalidate it) and its rows decode to its values."""
    kept = {}
    for name, q in blocks.items():
        try:
            p = model.get_parameter(name)
        except AttributeError:
            continue
        kept[name] = (q, _stamp(p))
    if kept:
        model.quantized = kept


def blocks_for(model, name: str) -> QuantWeight | None:
    entry = getattr(model, "quantized", {}).get(name)
    if entry is None:
        return None
    q, stamp = entry
    p = model.get_parameter(name)
    if p.is_meta and name in getattr(model, "dense_released", {}):
        return q  # `release_dense` dropped the fp32 copy: the blocks are the weight
    if p.device.type != "cpu" or p.dtype != torch.float32 or _stamp(p) != stamp or not q.check(p):
        return None
    return q


def release_dense(model) -> int:
    """Drop the fp32 copy of every matrix that has blocks and is used only as a matmul weight
    (serving reads the blocks; the fp32 values are the blocks' exact decode): each such parameter
    becomes a shape-only `meta` tensor. -> bytes freed. Kept: tied parameters and the first one
    (the embedding: its rows are looked up, and code takes the model's device/dtype from it).

    Anything that needs the fp32 weights again gets them back bit for bit (`restore_dense`): a
    forward through a released module or `state_dict()` restores them all first (training,
    `Transformer.forward` for model variants, saving). Returns 0 without the kernel (then the
    engine multiplies the fp32 weights)."""
    if not available() or not getattr(model, "quantized", None):
        return 0
    count: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        count[id(p)] = count.get(id(p), 0) + 1
    first = id(next(model.parameters()))
    released = getattr(model, "dense_released", {})
    freed = 0
    for name in list(model.quantized):
        p = model.get_parameter(name)
        if count.get(id(p)) != 1 or id(p) == first or name in released or blocks_for(model, name) is None:
            continue
        mod_name, attr = name.rsplit(".", 1)
        mod = model.get_submodule(mod_name)
        mod._parameters[attr] = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta"),
                                                   requires_grad=p.requires_grad)
        released[name] = mod.register_forward_pre_hook(lambda *_: restore_dense(model) and None)
        freed += p.numel() * p.element_size()
    if released and not hasattr(model, "_dense_sd_hook"):
        model._dense_sd_hook = model.register_state_dict_pre_hook(lambda *_: restore_dense(model) and None)
    model.dense_released = released
    return freed


def restore_dense(model) -> int:
    """Put back the fp32 parameters `release_dense` dropped, decoded from the blocks (the very
    values they had). -> bytes restored."""
    released = getattr(model, "dense_released", None)
    if not released:
        return 0
    restored = 0
    with torch.inference_mode(False), torch.no_grad():  # ordinary tensors: training may follow
        for name, hook in released.items():
            hook.remove()
            mod_name, attr = name.rsplit(".", 1)
            mod, q = model.get_submodule(mod_name), model.quantized[name][0]
            meta = mod._parameters[attr]
            w = torch.nn.Parameter(q.dequantize().reshape(meta.shape).to(meta.dtype), requires_grad=meta.requires_grad)
            mod._parameters[attr] = w
            model.quantized[name] = (q, _stamp(w))
            restored += w.numel() * w.element_size()
    model.dense_released = {}
    from llmlab.log import get_logger
    get_logger().info(f"restored {restored / 2 ** 20:.0f} MB of fp32 weights from their blocks")
    return restored
