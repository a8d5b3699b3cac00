"""A model's weights regrouped once for inference (`fused`): q/k/v and gate/up become one matmul
each, every activation is a 2-D (rows, features) tensor, each layer is ~15 tensor ops.

It reads the model's own modules (embed_tokens, layers.N.self_attn.q_proj, ..., lm_head), so any
checkpoint `llmlab.model` loads works here (RoPE or learned positions, SwiGLU or GELU, RMSNorm or
LayerNorm, MHA/GQA/MQA, biases). A matmul weight is one of three kinds (`_lin`):
- plain fp32 (MKL; a one-row product is a gemv);
- `Packed`: reordered once by oneDNN (`llmlab.device.use_onednn` decides whether oneDNN is used):
  faster for decode batches, and a row's bits do not depend on the row count
  (`packed_min_rows` re-checks that at run time);
- `QLinear`: GGUF blocks multiplied by the block kernel (`llmlab.kernels.ggml`).
MKL's sgemm computes a row identically only for some row counts, and which ones depends on the CPU
and the thread count: `mkl_rule` measures at run time which padding rule (`MKL_RULES`) holds for the
model's shapes and `invariant_rows(M, rule)` pads to it. Measured (docs/LOG.md, session 16): on the
AVX2 EPYC, 4 / 8 / >= 12 rows at 1 and 2 threads; on the AVX-512 Xeon only >= 16 rows at 1 thread,
and at 2 threads the (576, 1536) product also differs for M in 57..192, so no pad-to-k rule holds
there and the engine runs those matmuls at 1 thread.
Measured figures behind these choices: docs/LOG.md ("Inference forward: packed weights").
"""
from __future__ import annotations

import copy
import weakref

import torch
import torch.nn.functional as F

from llmlab.device import num_threads, use_onednn
from llmlab.errors import UserError
from llmlab.kernels import ggml
from llmlab.kernels.ggml import matmul as qmatmul
from llmlab.log import get_logger


# Padding rules for MKL GEMMs, fewest padding rows first: a rule pads n rows to its first count >= n
# (n itself beyond its last). (4, 8, 12) was measured on the AVX2 EPYC, (16,) on the AVX-512 Xeon.
MKL_RULES = ((4, 8, 12), (16,), (32,), (64,))


def invariant_rows(n: int, rule: tuple = MKL_RULES[0]) -> int:
    """Rows to run a GEMM with so that each of the first n rows is computed by the same kernel and
    reduction order whatever n is, under `rule` (which rule holds on this CPU: `mkl_rule`)."""
    return next((r for r in rule if r >= n), n)


class _Layer:
    __slots__ = ("n1", "qkv_w", "qkv_b", "o_w", "o_b", "n2", "up_w", "up_b", "down_w", "down_b", "swiglu")


def _norm_spec(mod):
    from torch import nn

    from llmlab.model.norm import RMSNorm
    if isinstance(mod, RMSNorm) and mod.weight.dtype == torch.float32:
        return (0, mod.weight, mod.eps)
    if isinstance(mod, nn.LayerNorm):
        return (1, mod.weight, mod.bias, mod.eps)
    return (2, mod)


def _norm(x: torch.Tensor, s) -> torch.Tensor:
    if s[0] == 0:
        return F.rms_norm(x, (x.shape[-1],), s[1], s[2])
    if s[0] == 1:
        return F.layer_norm(x, (x.shape[-1],), s[1], s[2], s[3])
    return s[1](x)


class Packed:
    """A weight reordered once by oneDNN into its blocked layout, for x (M, in) @ W.T.

    Why: MKL's sgemm packs the weight on every call; packed once, decode-size products are faster
    and a row's bits do not depend on the row count M (no padding rows; MKL needs padding, and how
    much depends on the CPU: `mkl_rule`). Figures: docs/LOG.md. `packed_rows_invariant` re-checks
    invariance at run time."""
    __slots__ = ("w",)
    HINT = 32  # the batch size oneDNN packs for (any M works; 32 = a full decode batch)

    def __init__(self, w: torch.Tensor):
        self.w = torch.ops.mkldnn._reorder_linear_weight(w.detach().contiguous(), self.HINT)


class QLinear:
    """A weight that also exists as GGUF blocks (`llmlab.kernels.ggml`): multiplied by the block
    kernel, which uses the very same fp32 weight values but reads ~5x fewer bytes. gemm: its
    register-tiled path for many rows (prefill), else the one for few rows (decode).
    No fp32 copy is kept (fused q/k/v and gate/up would be ~280 MB for SmolLM2): `w` builds one
    from the model's parameters when something asks (the oneDNN packing, tests)."""
    __slots__ = ("parts", "q", "gemm")

    def __init__(self, parts: tuple, q, gemm: bool = False):
        self.parts, self.q, self.gemm = parts, q, gemm

    @property
    def w(self) -> torch.Tensor:
        if any(p.is_meta for p in self.parts):  # `ggml.release_dense`: the blocks' exact decode
            return self.q.dequantize()
        return torch.cat(self.parts) if len(self.parts) > 1 else self.parts[0]


def _fp32(w):
    return w.w if type(w) is QLinear else w


def _lin(x: torch.Tensor, w, b: torch.Tensor | None) -> torch.Tensor:
    """x (M, in) -> (M, out). A `Packed` weight: oneDNN. A `QLinear`: the block kernel. A plain
    one with one row: matrix-vector product (MKL's gemv reads the weight ~2x faster than its gemm
    with M = 1 at one thread)."""
    if type(w) is Packed:
        return torch.ops.mkldnn._linear_pointwise(x, w.w, b, "none", [], "")
    if type(w) is QLinear:
        return qmatmul(x, w.q, b, w.gemm)
    if x.shape[0] == 1:
        y = torch.mv(w, x[0]) if b is None else torch.addmv(b, w, x[0])
        return y[None]
    return F.linear(x, w, b)


class FusedModel:
    """A model's weights regrouped for inference; rebuilt when the model's parameters change."""

    def __init__(self, model, sig, blocks: bool = True):
        """blocks: use the model's GGUF blocks (`model.quantized`) where every part of a weight
        has them, unchanged since loading, and the kernel builds."""
        unsupported = model.config.beyond_llama_gpt()
        if unsupported:  # these variants run in Transformer.forward (training, generate_batch), not here yet
            raise UserError(f"the inference engine does not implement this model's {', '.join(unsupported)} yet "
                            "(it runs LLaMA- and GPT-2-style models); Transformer.forward with a KVCache "
                            "and llmlab.infer.generate.generate_batch decode every variant")
        self.sig = sig
        self.has_blocks = False  # some matmul weights are QLinear
        self.n_plain = 0  # matmul weights without blocks
        names = {id(p): n for n, p in model.named_parameters()}
        use_blocks = blocks and bool(getattr(model, "quantized", None)) and ggml.available()

        def weight(*params):
            if use_blocks:
                qs = [ggml.blocks_for(model, names[id(p)]) for p in params]
                if all(q is not None for q in qs) and (q := ggml.QuantWeight.cat(qs)) is not None:
                    self.has_blocks = True
                    return QLinear(tuple(p.detach() for p in params), q)
            self.n_plain += 1
            # a released weight (`ggml.release_dense`) is its blocks' decode (mixed formats, no kernel)
            dense = [ggml.blocks_for(model, names[id(p)]).dequantize() if p.is_meta else p.detach() for p in params]
            return torch.cat(dense) if len(dense) > 1 else dense[0]
        cfg = model.config
        self.cfg = cfg
        self.H, self.Hkv, self.D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        bb = model.model
        self.embed = bb.embed_tokens.weight.detach()
        self.pos_embed = bb.embed_positions.weight.detach() if cfg.position == "learned" else None
        self.rope = model.rope if cfg.position == "rope" else None
        self.norm = _norm_spec(bb.norm)
        self.head_w = weight(model.lm_head.weight)
        self.head_b = model.lm_head.bias.detach() if model.lm_head.bias is not None else None
        self.layers = []
        with torch.no_grad():
            for blk in bb.layers:
                a, m, L = blk.self_attn, blk.mlp, _Layer()
                L.n1, L.n2 = _norm_spec(blk.input_layernorm), _norm_spec(blk.post_attention_layernorm)
                L.qkv_w = weight(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight)
                L.qkv_b = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]) if a.q_proj.bias is not None else None
                L.o_w, L.o_b = weight(a.o_proj.weight), (a.o_proj.bias.detach() if a.o_proj.bias is not None else None)
                L.swiglu = hasattr(m, "gate_proj")
                if L.swiglu:
                    L.up_w = weight(m.gate_proj.weight, m.up_proj.weight)
                    L.up_b = torch.cat([m.gate_proj.bias, m.up_proj.bias]) if m.up_proj.bias is not None else None
                else:
                    L.up_w = weight(m.up_proj.weight)
                    L.up_b = m.up_proj.bias.detach() if m.up_proj.bias is not None else None
                L.down_w = weight(m.down_proj.weight)
                L.down_b = m.down_proj.bias.detach() if m.down_proj.bias is not None else None
                self.layers.append(L)

    def prefill_view(self) -> "FusedModel":
        """The same weights with every QLinear on the kernel's GEMM path (where it exists:
        AVX-512), for prompts: faster at 512+ rows than the decode path (docs/LOG.md),
        and no packed fp32 copy to build. Built once; self where there is nothing to switch."""
        if not hasattr(self, "_prefill"):
            self._prefill = self
            if self.has_blocks and ggml.has_gemm():
                pv = self._remap(lambda v: QLinear(v.parts, v.q, gemm=True) if type(v) is QLinear else v)
                pv._prefill = pv
                self._prefill = pv
        return self._prefill

    def _remap(self, fn) -> "FusedModel":
        """A shallow copy whose matmul weights (every layer's *_w and the LM head) are fn(weight)."""
        out = copy.copy(self)
        out.layers = []
        for L in self.layers:
            P = _Layer()
            for name in _Layer.__slots__:
                v = getattr(L, name)
                setattr(P, name, fn(v) if name.endswith("_w") else v)
            out.layers.append(P)
        out.head_w = fn(self.head_w)
        return out

    def packed(self) -> "FusedModel | None":
        """The same model with every matmul weight oneDNN-packed (`Packed`), built on first use and
        kept; None where that is unavailable (not CPU fp32, no mkldnn) or, on this machine, not
        row-count invariant (then the engine pads rows for MKL instead)."""
        if not hasattr(self, "_packed"):
            self._packed = None
            if _on_cpu(self.embed) and self.embed.dtype == torch.float32 and use_onednn():
                try:
                    with num_threads(1):
                        pk = self._remap(lambda v: Packed(_fp32(v)))
                    pk.min_rows = packed_min_rows(pk)
                    if pk.min_rows is not None:
                        self._packed = pk
                except (RuntimeError, AttributeError):  # an op this build lacks
                    pass
        return self._packed

    @staticmethod
    def signature(model) -> tuple:
        sig = []
        for p in model.parameters():
            try:
                sig.append((p.data_ptr(), p._version))
            except RuntimeError:  # an inference tensor has no version counter
                sig.append((p.data_ptr(), 0))
        return tuple(sig)

    # pieces of a layer, on 2-D (rows, features) activations ---------------------------------
    def embed_rows(self, ids: torch.Tensor, pos: torch.Tensor):
        """-> x (M, d), rope (cos, sin) as (M, 1, D) or None."""
        x = F.embedding(ids, self.embed)
        if self.pos_embed is not None:
            return x + F.embedding(pos, self.pos_embed), None
        cos, sin = self.rope.cos[pos], self.rope.sin[pos]
        return x, (cos.to(x.dtype)[:, None], sin.to(x.dtype)[:, None])

    def qkv(self, L: _Layer, h: torch.Tensor, rope):
        """h (M, d) -> q (M, H, D), k (M, Hkv, D), v (M, Hkv, D), RoPE applied to q and k."""
        M, H, Hkv, D = h.shape[0], self.H, self.Hkv, self.D
        qkv = _lin(h, L.qkv_w, L.qkv_b)
        qk = qkv[:, :(H + Hkv) * D].view(M, H + Hkv, D)
        v = qkv[:, (H + Hkv) * D:].view(M, Hkv, D)
        if rope is not None:  # x*cos + rotate_half(x)*sin; rotate_half's sign lives in sin
            half = D // 2
            qk = torch.addcmul(qk * rope[0], torch.cat((qk[..., half:], qk[..., :half]), -1), rope[1])
        return qk[:, :H], qk[:, H:], v

    def attn_out_mlp(self, L: _Layer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x + o(y), then + mlp(norm(.)); y (M, H*D)."""
        x = x + _lin(y, L.o_w, L.o_b)
        u = _lin(_norm(x, L.n2), L.up_w, L.up_b)
        if L.swiglu:
            g, u = u.chunk(2, dim=-1)
            u = F.silu(g).mul_(u)
        else:
            u = F.gelu(u, approximate="tanh")
        return x.add_(_lin(u, L.down_w, L.down_b))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        if type(self.head_w) is QLinear and ggml.int8_head():  # LLMLAB_INT8_HEAD: only the head in int8
            return qmatmul(_norm(h, self.norm), self.head_w.q, self.head_b, self.head_w.gemm, int8=True)
        return _lin(_norm(h, self.norm), self.head_w, self.head_b)


_FUSED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def fused(model) -> FusedModel:
    """The model's FusedModel, built once (and again if its weights were changed in place)."""
    sig = FusedModel.signature(model)
    f = _FUSED.get(model)
    if f is None or f.sig != sig:
        with num_threads(1):  # memory-bound copies: one thread is as fast (docs/LOG.md)
            f = _FUSED[model] = FusedModel(model, sig)
    return f


_INVARIANT: dict = {}


def packed_min_rows(w: "FusedModel", rows=(1, 2, 3, 5, 8, 13)) -> int | None:
    """The fewest rows p (1, 2, 4 or 8) such that, with calls padded to at least p rows, a row of
    every packed matmul (layer 0's and the LM head) has the same bits for each row count in
    `rows` as in a 21-row call, at 1 thread and at torch's thread count; None if no p works.
    Measured once per process and shape (~0.1 s per thread count): the engine's batch
    invariance rests on it (the full sweep is tests/test_infer_runner.py's). oneDNN's AVX-512
    kernels compute M = 1 apart for some shapes (p = 2 there); its AVX2 ones need p = 1."""
    L = w.layers[0]
    mats = [(L.qkv_w, L.qkv_b), (L.o_w, L.o_b), (L.up_w, L.up_b), (L.down_w, L.down_b), (w.head_w, w.head_b)]
    key = (tuple(tuple(m.w.shape) for m, _ in mats), torch.get_num_threads(), rows)
    if key not in _INVARIANT:
        g, ok = torch.Generator().manual_seed(0), {1: True, 2: True, 4: True, 8: True}
        for n in sorted({1, torch.get_num_threads()}):
            with num_threads(n), torch.inference_mode():
                for m, b in mats:
                    x = torch.randn(21, m.w.shape[1], generator=g)
                    ref = _lin(x, m, b)
                    for p in ok:
                        ok[p] = ok[p] and all(torch.equal(_lin(x[:max(r, p)], m, b)[:r], ref[:r]) for r in rows)
        _INVARIANT[key] = next((p for p, good in ok.items() if good), None)
    return _INVARIANT[key]


# The row counts `mkl_rule` checks, against a call with _MKL_REF rows: small ones (decode batches, the
# rules' own counts) and larger ones, where MKL at 2 threads on the AVX-512 Xeon splits differently.
_MKL_ROWS, _MKL_REF = (1, 2, 3, 5, 8, 13, 16, 21, 33, 64, 100, 150, 200), 256


def mkl_rule(w: "FusedModel") -> tuple[tuple, int | None]:
    """(rule, threads) for the plain (MKL) matmuls of layer 0 and the LM head: the first rule of
    MKL_RULES under which, for each row count n in _MKL_ROWS, the invariant_rows(n, rule) rows of
    every such matmul have the bits of a 256-row call at 1 thread, both at 1 thread and at torch's
    thread count (threads None: any count the tuner picks); else the first that holds at 1 thread
    (threads 1: the engine must run them at 1 thread); else the first rule, with a warning that
    batch invariance is not guaranteed. Measured once per process, shapes and thread count
    (SmolLM2's shapes on the AVX-512 Xeon: 0.9 s at 1 thread, 1.7 s at 2, where it gives ((16,), 1);
    the AVX2 EPYC's MKL gave 4 / 8 / >= 12 at 1 and 2 threads). A sample of row counts, not a
    proof: the wider sweep is tests/test_infer_runner.py's."""
    L = w.layers[0]
    mats = [(m, b) for m, b in [(L.qkv_w, L.qkv_b), (L.o_w, L.o_b), (L.up_w, L.up_b), (L.down_w, L.down_b),
                                (w.head_w, w.head_b)] if type(m) is torch.Tensor]  # QLinear: no MKL
    if not mats:
        return MKL_RULES[0], None
    T, m0 = torch.get_num_threads(), mats[0][0]
    key = ("mkl", tuple((tuple(m.shape), b is not None) for m, b in mats), m0.dtype, m0.device, T)
    if key not in _INVARIANT:
        g = torch.Generator().manual_seed(0)
        xs = [torch.randn(_MKL_REF, m.shape[1], generator=g).to(m) for m, _ in mats]
        with num_threads(1), torch.inference_mode():
            refs = [_lin(x, m, b) for x, (m, b) in zip(xs, mats)]
        seen = {}

        def holds(rule, n):  # at n threads; each (rows, threads) computed once
            for M in (invariant_rows(r, rule) for r in _MKL_ROWS):
                if (M, n) not in seen:
                    with num_threads(n), torch.inference_mode():
                        seen[M, n] = all(torch.equal(_lin(x[:M], m, b), ref[:M])
                                         for x, ref, (m, b) in zip(xs, refs, mats))
                if not seen[M, n]:
                    return False
            return True
        picked = (next(((r, None) for r in MKL_RULES if all(holds(r, n) for n in sorted({1, T}))), None)
                  or next(((r, 1) for r in MKL_RULES if holds(r, 1)), None))
        if picked is None:
            get_logger().warning("batch invariance is not guaranteed on this CPU/BLAS: no row-padding rule "
                                 f"of {MKL_RULES} gives MKL rows independent of the row count")
            picked = (MKL_RULES[0], None)
        _INVARIANT[key] = picked
    return _INVARIANT[key]


def packed_rows_invariant(w: "FusedModel", rows=(1, 2, 3, 5, 8, 13)) -> bool:
    """Rows invariant to the row count without any padding (packed_min_rows == 1)?"""
    return packed_min_rows(w, rows) == 1


def _on_cpu(t: torch.Tensor) -> bool:
    return t.device.type == "cpu"
