"""The model's forward pass for inference: over the paged KV cache (prefill several sequences,
decode many at once) and over a contiguous cache (one sequence: `generate_ids`).

It reads the model's own modules (embed_tokens, layers.N.self_attn.q_proj, ..., lm_head), so any
checkpoint `llmlab.model` loads works here (RoPE or learned positions, SwiGLU or GELU, RMSNorm or
LayerNorm, MHA/GQA/MQA, biases), regrouped once per model (`fused`): q/k/v and gate/up become
one matmul each, every activation is a 2-D (rows, features) tensor, and each layer is ~15 tensor
ops. All the rows of a step share every matmul: a decode step over 32 sequences is one (32, d)
GEMM per weight, and the prompts prefilled in one engine step are concatenated into one GEMM.

Batch invariance (a request's tokens must not depend on what else runs):
- fp32 GEMM rows: the engine's matmuls use weights packed once by oneDNN (`Packed`), whose rows
  have the same bits for every row count M (measured M = 1..69 and up to 3,000 here; re-checked
  at run time by `packed_rows_invariant`, at 1 thread and at torch's count). Where packing is
  unavailable or that check fails, MKL's sgemm is used on `invariant_rows(M)` rows: it computes a
  row identically for M = 4, 8 and every M >= 12 (differently for M in 1..3, 5..7, 9..11 at 2
  threads), at 1 or 2 threads (extra rows are zeros and are discarded);
- attention runs at 1 thread (torch's flash-attention kernel splits differently at 2 threads,
  measured: batched != alone there), per sequence over its own keys in prefill; in decode the
  sequences are grouped by their key count rounded up to `attn_bucket` (32) and each group is
  one masked SDPA call: a sequence's padded length depends on its own length only, and at one
  thread each batch element of SDPA is computed the same whatever the batch (measured);
- everything else (norms, RoPE, SiLU, residual adds) is row-wise.
tests/test_infer_engine.py checks 16 concurrent greedy requests == each alone, bit for bit.

Threads. On a 2-core machine shared with other jobs, a parallel region costs a scheduler time
slice whenever the other core is taken: a (32, 576) x (576, 3072) GEMM measured 26 ms at 2
threads vs 5.8 ms at 1 under load 3.3 (and the reverse when idle). GEMM bits do not depend on
the thread count, so `ThreadTuner` times every layer and keeps the faster count per kind of
step (trying each count on one layer of the first forward, re-trying the other now and then).
"""
from __future__ import annotations

import contextlib
import copy
import time
import weakref

import torch
import torch.nn.functional as F

from llmlab.infer.paged import BlockTable, PagedKVCache
from llmlab.quant import ggml
from llmlab.quant.ggml import matmul as qmatmul


def invariant_rows(n: int) -> int:
    """Rows to run a GEMM with so that each of the first n rows is computed by the same kernel and
    reduction order whatever n is (see the module docstring)."""
    if n <= 4:
        return 4
    if n <= 8:
        return 8
    return max(n, 12)


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


class ThreadTuner:
    """Chooses the intra-op thread count of each layer of a forward by measuring them.

    Per kind of step, an exponential average of seconds per layer for each candidate count. The
    first forward of a kind tries every candidate on one layer each (layers 0, 1, ...) and runs
    its remaining layers at the faster: a bad guess costs one layer, not a whole step (a 2,048-row
    prefill step at the wrong count costs seconds). Later forwards run at the best count, except
    one layer at the other count every `explore_every` forwards (a shared machine's load
    changes: 2 threads measured 11x slower than 1 under load average 6 here, faster when idle)."""

    def __init__(self, max_threads: int, explore_every: int = 8):
        self.cands = sorted({1, max(1, max_threads)})
        self.explore_every = explore_every
        self.cost: dict = {}
        self.calls: dict = {}

    def best(self, kind) -> int:
        known = [n for n in self.cands if (kind, n) in self.cost]
        return min(known, key=lambda n: self.cost[(kind, n)]) if known else self.cands[-1]

    def start(self, kind, n_layers: int) -> int | None:
        """Begin a forward of this kind -> the layer that re-tries the other count, or None."""
        c = self.calls[kind] = self.calls.get(kind, 0) + 1
        if len(self.cands) > 1 and n_layers > 1 and c % self.explore_every == 0:
            return c // self.explore_every % n_layers
        return None

    def pick(self, kind, layer: int, explore: int | None) -> int:
        """Thread count for this layer: an unmeasured count first, else the best (or the other one
        on the exploring layer)."""
        unknown = [n for n in self.cands if (kind, n) not in self.cost]
        if unknown:
            return unknown[-1]
        best = self.best(kind)
        if layer == explore:
            return next(n for n in self.cands if n != best)
        return best

    def record(self, kind, n: int, seconds: float) -> None:
        key = (kind, n)
        self.cost[key] = seconds if key not in self.cost else 0.7 * self.cost[key] + 0.3 * seconds


def run_layers(tuner: "ThreadTuner | None", kind, n_layers: int, layer, fixed: int | None = None) -> None:
    """layer(i) for i in range(n_layers), each at the thread count the tuner picks (CPU), timed."""
    if tuner is None or fixed:
        with num_threads(fixed) if fixed else contextlib.nullcontext():
            for i in range(n_layers):
                layer(i)
        return
    explore = tuner.start(kind, n_layers)
    for i in range(n_layers):
        n = tuner.pick(kind, i, explore)
        t0 = time.perf_counter()
        with num_threads(n):
            layer(i)
        tuner.record(kind, n, time.perf_counter() - t0)


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

    Why (measured here, AMD EPYC, AVX2, torch 2.13, one thread): MKL's sgemm packs the weight on
    every call, so a 32-row decode step's matmuls over SmolLM2's 538 MB took 198-252 ms (~34
    GFLOP/s); with the weights packed once, oneDNN takes 164-187 ms (the LM head 33-40 vs 52-76
    ms); 2,048-row prefill GEMMs are equal (~67 GFLOP/s). And a row's bits do not depend on the
    row count M at all (M = 1..69 and up to 3,000 checked, pack hints 8..512), where MKL needs M
    in {4, 8, >= 12}: no padding rows. `packed_rows_invariant` re-checks it at run time."""
    __slots__ = ("w",)
    HINT = 32  # the batch size oneDNN packs for (any M works; 32 = a full decode batch)

    def __init__(self, w: torch.Tensor):
        self.w = torch.ops.mkldnn._reorder_linear_weight(w.detach().contiguous(), self.HINT)


class QLinear:
    """A weight that also exists as GGUF blocks (`llmlab.quant.ggml`): multiplied by the block
    kernel, which uses the very same fp32 weight values but reads ~5x fewer bytes. gemm: its
    register-tiled path for many rows (prefill), else the one for few rows (decode)."""
    __slots__ = ("w", "q", "gemm")

    def __init__(self, w: torch.Tensor, q, gemm: bool = False):
        self.w, self.q, self.gemm = w, q, gemm


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
        self.sig = sig
        self.has_blocks = False  # some matmul weights are QLinear
        self.n_plain = 0  # matmul weights without blocks
        names = {id(p): n for n, p in model.named_parameters()}
        use_blocks = blocks and bool(getattr(model, "quantized", None)) and ggml.available()

        def weight(*params):
            w = torch.cat([p.detach() for p in params]) if len(params) > 1 else params[0].detach()
            if use_blocks:
                qs = [ggml.blocks_for(model, names[id(p)]) for p in params]
                if all(q is not None for q in qs) and (q := ggml.QuantWeight.cat(qs)) is not None:
                    self.has_blocks = True
                    return QLinear(w, q)
            self.n_plain += 1
            return w
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
        AVX-512), for prompts: 168-191 GFLOP/s at 512+ rows vs 90-128 on the decode path,
        and no packed fp32 copy to build. Built once; self where there is nothing to switch."""
        if not hasattr(self, "_prefill"):
            self._prefill = self
            if self.has_blocks and ggml.has_gemm():
                pv = self._remap(lambda v: QLinear(v.w, v.q, gemm=True) if type(v) is QLinear else v)
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
            if _on_cpu(self.embed) and self.embed.dtype == torch.float32 and torch.backends.mkldnn.is_available():
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
        return _lin(_norm(h, self.norm), self.head_w, self.head_b)


_FUSED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def fused(model) -> FusedModel:
    """The model's FusedModel, built once (and again if its weights were changed in place)."""
    sig = FusedModel.signature(model)
    f = _FUSED.get(model)
    if f is None or f.sig != sig:
        with num_threads(1):  # memory-bound copies (see load.py)
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


def packed_rows_invariant(w: "FusedModel", rows=(1, 2, 3, 5, 8, 13)) -> bool:
    """Rows invariant to the row count without any padding (packed_min_rows == 1)?"""
    return packed_min_rows(w, rows) == 1


def _on_cpu(t: torch.Tensor) -> bool:
    return t.device.type == "cpu"


class PagedRunner:
    def __init__(self, model, cache: PagedKVCache, row_pad: int = 8, threads: int | None = None,
                 attn_bucket: int = 32):
        """row_pad <= 1: the plain weights (or GGUF blocks), no row padding (one user, nothing to
        be invariant to: a 1-row matmul is a gemv, the fastest at batch 1). Otherwise every kind
        of step (prefill, decode) uses one matmul whose rows do not depend on the row count:
        decode the GGUF blocks where the model has them (`QLinear`: fewest bytes per token),
        prefill the oneDNN-packed weights (`Packed`, padded to `min_rows`; compute-bound, where
        oneDNN is fastest); where packing is unavailable or not invariant, the blocks, else MKL
        on `invariant_rows` rows. threads: intra-op threads for the matmuls (default: measured
        per kind of step, see ThreadTuner)."""
        self.model, self.cache, self.cfg = model, cache, model.config
        self.row_pad, self.attn_bucket = row_pad, attn_bucket
        self.device = next(model.parameters()).device
        self.H, self.Hkv, self.D = self.cfg.num_attention_heads, self.cfg.num_key_value_heads, self.cfg.head_dim
        base = fused(model)
        blocks = base.has_blocks and base.n_plain == 0  # the block kernel: rows alike for every M
        gemm = blocks and base.prefill_view() is not base
        pk = base.packed() if row_pad > 1 and not gemm else None
        same, mkl = (lambda n: n), invariant_rows
        packed = (pk, lambda n: max(n, pk.min_rows)) if pk is not None else None
        if row_pad <= 1 and not gemm:  # one user: plain weights or blocks, no padding
            decode = prefill = (base, same)
        elif blocks:  # decode on the blocks; prompts on their GEMM path, else packed, else blocks
            decode = (base, same)
            prefill = (base.prefill_view(), same) if gemm else packed or decode
        else:
            decode = prefill = packed or (base, mkl)
        (self.w, self._pad), (self.w_prefill, self._pad_prefill) = decode, prefill
        self.packed = self._pad is not mkl and (row_pad > 1 or gemm)  # no padding beyond min_rows
        self.fixed_threads = threads
        self.tuner = ThreadTuner(torch.get_num_threads())

    def padded_rows(self, n: int, prefill: bool = False) -> int:
        return (self._pad_prefill if prefill else self._pad)(n)

    def _forward(self, kind, embed, layer, head):
        """x = embed(); x = layer(i, x) for every layer; head(x) -- at tuned thread counts on CPU."""
        cpu = _on_cpu(self.w.embed)
        tuner = self.tuner if cpu else None
        main = (self.fixed_threads or self.tuner.best(kind)) if cpu else None
        with num_threads(main) if cpu else contextlib.nullcontext():
            st = [embed()]

        def one(i):
            st[0] = layer(i, st[0])
        run_layers(tuner, kind, len(self.w.layers), one, self.fixed_threads)
        with num_threads(main) if cpu else contextlib.nullcontext():
            return head(st[0])

    def _attn_threads(self):
        return num_threads(1) if _on_cpu(self.w.embed) else contextlib.nullcontext()

    # ------------------------------------------------------------------------------- prefill
    @torch.inference_mode()
    def prefill(self, table: BlockTable, tokens: list[int], all_logits: bool = False) -> torch.Tensor:
        """Append `tokens` to one sequence (space must be reserved) -> logits of the last position
        (V,), or of every position (T, V) with all_logits."""
        return self.prefill_many([(table, tokens, all_logits)])[0]

    @torch.inference_mode()
    def prefill_many(self, items: list[tuple[BlockTable, list[int], bool]]) -> list[torch.Tensor]:
        """Append tokens to several sequences in one forward: their rows share every matmul,
        attention is per sequence. items: (table, tokens, all_logits) -> per item the logits of
        its last position (V,), or (T, V) with all_logits."""
        dev, w, bs = self.device, self.w_prefill, self.cache.block_size
        n = sum(len(t) for _, t, _ in items)
        M = self.padded_rows(n, prefill=True)
        ids, pos, slots, segs, off = [], [], [], [], 0
        for table, toks, _ in items:
            start, T = table.num_tokens, len(toks)
            ids += toks
            pos += range(start, start + T)
            slots += [table.blocks[p // bs] * bs + p % bs for p in range(start, start + T)]
            mask = None
            if start > 0:  # a chunk after cached positions: causal with an offset
                mask = (torch.arange(start + T, device=dev)[None]
                        <= torch.arange(start, start + T, device=dev)[:, None])
            segs.append((off, T, start, table, mask))
            off += T
        pad = M - n
        ids_t = torch.tensor(ids + [0] * pad, device=dev)
        pos_t = torch.tensor(pos + [0] * pad, device=dev)
        slots_t = torch.tensor(slots, device=dev)
        heads, sizes = [], []
        for (o, T, _, _, _), (_, _, all_logits) in zip(segs, items):
            heads += range(o, o + T) if all_logits else [o + T - 1]
            sizes.append(T if all_logits else 1)

        st = {}

        def embed():
            x, st["rope"] = w.embed_rows(ids_t, pos_t)
            st["y"] = torch.zeros(M, self.H, self.D, dtype=x.dtype, device=dev)
            return x

        def layer(li, x):
            L, y = w.layers[li], st["y"]
            q, k, v = w.qkv(L, _norm(x, L.n1), st["rope"])
            self.cache.write(li, slots_t, k[:n], v[:n])
            with self._attn_threads():
                for o, T, start, table, mask in segs:
                    qs = q[o:o + T].transpose(0, 1)[None]
                    if start == 0:
                        ks, vs = k[o:o + T].transpose(0, 1)[None], v[o:o + T].transpose(0, 1)[None]
                    else:
                        ks, vs = self.cache.gather(li, table, start + T)
                        ks, vs = ks[None], vs[None]
                    out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask,
                                                         is_causal=mask is None and T > 1,
                                                         enable_gqa=self.Hkv != self.H)
                    y[o:o + T] = out[0].transpose(0, 1)
            return w.attn_out_mlp(L, x, y.view(M, -1))

        def head(x):
            R = len(heads)
            hsel = x[torch.tensor(heads + [heads[-1]] * (self.padded_rows(R, prefill=True) - R), device=dev)]
            return w.logits(hsel)[:R]

        logits = self._forward(("prefill", M.bit_length()), embed, layer, head)
        for table, toks, _ in items:
            table.num_tokens += len(toks)
        outs, o = [], 0
        for (_, _, all_logits), s in zip(items, sizes):
            outs.append(logits[o:o + s] if all_logits else logits[o])
            o += s
        return outs

    # -------------------------------------------------------------------------------- decode
    @torch.inference_mode()
    def decode(self, tables: list[BlockTable], tokens: list[int]) -> torch.Tensor:
        """One new token for each sequence (space must be reserved) -> logits (B, V)."""
        dev, w, bs, bucket = self.device, self.w, self.cache.block_size, self.attn_bucket
        B = len(tables)
        M = self.padded_rows(B)
        lens = [t.num_tokens for t in tables]
        ids_t = torch.tensor(list(tokens) + [0] * (M - B), device=dev)
        pos_t = torch.tensor(lens + [0] * (M - B), device=dev)
        slots_t = torch.tensor([t.blocks[n // bs] * bs + n % bs for t, n in zip(tables, lens)], device=dev)
        # attention groups: sequences whose key count rounds up to the same multiple of `bucket`;
        # padding keys read the cache's zero block and are masked out
        by_len: dict[int, list[int]] = {}
        for i, n in enumerate(lens):
            by_len.setdefault(-(-(n + 1) // bucket) * bucket, []).append(i)
        null = self.cache.null_slot
        groups = []
        for Lp, rows in by_len.items():
            idx, keep = [], []
            for i in rows:
                t, n = tables[i], lens[i] + 1
                s = [b * bs + j for b in t.blocks[:-(-n // bs)] for j in range(bs)][:n]
                idx.append(s + [null] * (Lp - n))
                keep.append([0.0] * n + [float("-inf")] * (Lp - n))
            mask = torch.tensor(keep, device=dev, dtype=w.embed.dtype)[:, None, None, :]
            groups.append((torch.tensor(rows, device=dev), torch.tensor(idx, device=dev).flatten(), mask))
        Hkv, D = self.Hkv, self.D

        st = {}

        def embed():
            x, st["rope"] = w.embed_rows(ids_t, pos_t)
            st["y"] = torch.zeros(M, self.H, D, dtype=x.dtype, device=dev)
            return x

        def layer(li, x):
            L, y = w.layers[li], st["y"]
            q, k, v = w.qkv(L, _norm(x, L.n1), st["rope"])
            self.cache.write(li, slots_t, k[:B], v[:B])
            kf, vf = self.cache.k[li].view(-1, Hkv, D), self.cache.v[li].view(-1, Hkv, D)
            with self._attn_threads():
                for rows, idx, mask in groups:  # index_select: ~3.5x faster than kf[idx] here
                    G, Lp = mask.shape[0], mask.shape[-1]
                    out = F.scaled_dot_product_attention(
                        q.index_select(0, rows)[:, :, None],
                        kf.index_select(0, idx).view(G, Lp, Hkv, D).transpose(1, 2),
                        vf.index_select(0, idx).view(G, Lp, Hkv, D).transpose(1, 2),
                        attn_mask=mask, enable_gqa=Hkv != self.H)
                    y.index_copy_(0, rows, out[:, :, 0])
            return w.attn_out_mlp(L, x, y.view(M, -1))

        logits = self._forward(("decode", M.bit_length()), embed, layer, lambda x: w.logits(x)[:B])
        for t in tables:
            t.num_tokens += 1
        return logits


class ContiguousDecoder:
    """One sequence over a contiguous KV cache (Hkv, max_len, D) per layer: the batch-1 path of
    `generate_ids`. No gathers, no padding rows; one-token steps are matrix-vector products
    (memory-bound). Both prompts and one-token steps run at the tuned thread count: one core
    streams ~9-10 GB/s here, and whether two stream more depends on what else the machine runs."""

    _tuners: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def __init__(self, model, max_len: int):
        self.w = w = fused(model)
        p = w.embed
        self.k = torch.empty(len(w.layers), w.Hkv, max_len, w.D, dtype=p.dtype, device=p.device)
        self.v = torch.empty_like(self.k)
        self.n = 0
        self.cpu = _on_cpu(p)
        if model not in self._tuners:
            self._tuners[model] = ThreadTuner(torch.get_num_threads())
        self.tuner = self._tuners[model]

    @torch.inference_mode()
    def forward(self, tokens: list[int]) -> torch.Tensor:
        """Append tokens -> logits of the last one (V,)."""
        w, start, T = (self.w.prefill_view() if len(tokens) > 1 else self.w), self.n, len(tokens)
        dev, cpu = self.k.device, self.cpu
        x, rope = w.embed_rows(torch.tensor(tokens, device=dev), torch.arange(start, start + T, device=dev))
        mask = None
        if start > 0 and T > 1:
            mask = torch.arange(start + T, device=dev)[None] <= torch.arange(start, start + T, device=dev)[:, None]
        st = [x]

        def layer(li):
            L, x = w.layers[li], st[0]
            q, k, v = w.qkv(L, _norm(x, L.n1), rope)
            self.k[li, :, start:start + T] = k.transpose(0, 1)
            self.v[li, :, start:start + T] = v.transpose(0, 1)
            with num_threads(1) if cpu else contextlib.nullcontext():
                y = F.scaled_dot_product_attention(q.transpose(0, 1)[None], self.k[li, :, :start + T][None],
                                                   self.v[li, :, :start + T][None], attn_mask=mask,
                                                   is_causal=start == 0 and T > 1, enable_gqa=w.Hkv != w.H)
            st[0] = w.attn_out_mlp(L, x, y[0].transpose(0, 1).reshape(T, -1))

        kind = ("prefill", T.bit_length()) if T > 1 else ("decode", 1)
        tuner = self.tuner if cpu else None
        with num_threads(self.tuner.best(kind)) if cpu else contextlib.nullcontext():
            run_layers(tuner, kind, len(w.layers), layer)
            self.n += T
            return w.logits(st[0][-1:])[0]
