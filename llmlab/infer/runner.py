"""The model's forward pass for inference: over the paged KV cache (`PagedRunner`: prefill several
sequences, decode many at once) and over a contiguous cache (`ContiguousDecoder`: one sequence,
`generate_ids`). Weights come regrouped from `llmlab.infer.fused`; thread counts from
`llmlab.infer.threads`. All the rows of a step share every matmul: a decode step over 32
sequences is one (32, d) GEMM per weight, and the prompts prefilled in one engine step are
concatenated into one GEMM.

Batch invariance (a request's tokens must not depend on what else runs):
- fp32 GEMM rows: oneDNN-packed weights (row bits independent of the row count, re-checked at run
  time by `packed_min_rows`), else MKL on `invariant_rows(M, rule)` rows (extra rows are zeros and
  are discarded) by the rule `mkl_rule` measures at run time (AVX2 EPYC: 4 / 8 / >= 12 rows at any
  thread count; AVX-512 Xeon: >= 16 rows, at 1 thread only, so the matmuls run at 1 thread there),
  or the GGUF block kernel (rows alike for every M);
- attention runs at 1 thread (torch's flash-attention kernel splits differently at 2 threads:
  batched != alone there), per sequence over its own keys in prefill; in decode the sequences are
  grouped by their key count rounded up to `attn_bucket` (32) and each group is one masked SDPA
  call: a sequence's padded length depends on its own length only, and at one thread each batch
  element of SDPA is computed the same whatever the batch;
- everything else (norms, RoPE, SiLU, residual adds) is row-wise.
tests/test_infer_engine.py checks 16 concurrent greedy requests == each alone, bit for bit.
Measured figures behind these choices: docs/LOG.md.
"""
from __future__ import annotations

import contextlib
import weakref

import torch
import torch.nn.functional as F

from llmlab.device import num_threads
from llmlab.infer.fused import _norm, _on_cpu, fused, invariant_rows, mkl_rule
from llmlab.infer.paged import BlockTable, PagedKVCache
from llmlab.infer.threads import ThreadTuner, run_c_tuned, run_layers
from llmlab.kernels import attention as c_attention
from llmlab.kernels import layer as c_layer


def _c_attention(w) -> bool:
    """Decode attention in C (llmlab/kernels/attention.c: keys read in place, no gathers): CPU
    fp32 caches where the library builds; torch's SDPA otherwise."""
    return _on_cpu(w.embed) and w.embed.dtype == torch.float32 and c_attention.load() is not None


def _c_layers(w):
    """The C decoder layers (llmlab/kernels/layer.c: every layer of a decode step in one call) for
    these weights, or None: not a LLaMA-style model with blocks everywhere, no compiler, or
    LLMLAB_C_LAYERS=0."""
    return c_layer.Layers.of(w) if c_layer.enabled() and _c_attention(w) else None


def bucket_rows(n: int) -> int:
    """n rounded up to one of 8 sizes per octave above 16 rows (at most 12.5 % extra rows).

    Why: oneDNN (ONEDNN_PRIMITIVE_CACHE_CAPACITY) and ideep (LRU_CACHE_CAPACITY) each keep a
    primitive per distinct input shape, 1,024 of each by default, and every cached one holds native
    memory: with a free row count, each new prompt-length mix grew a server's RSS for as long as it
    ran (+8-14 % in a 20-minute soak). Bucketed, the shapes of `max_prefill_tokens` <= 1,024 are
    at most 64 per weight, all met within the first minutes (docs/serve.md, "Soak"). Packed rows
    do not depend on the row count, so the padding rows change no output."""
    if n <= 16:
        return n
    step = 1 << (n.bit_length() - 4)
    return -(-n // step) * step


class PagedRunner:
    def __init__(self, model, cache: PagedKVCache, row_pad: int = 8, threads: int | None = None,
                 attn_bucket: int = 32):
        """row_pad <= 1: the plain weights (or GGUF blocks), no row padding (one user, nothing to
        be invariant to: a 1-row matmul is a gemv, the fastest at batch 1). Otherwise every kind
        of step (prefill, decode) uses one matmul whose rows do not depend on the row count:
        where the model has GGUF blocks, decode on them (`QLinear`: fewest bytes per token) and
        prefill on their GEMM path (AVX-512; elsewhere on the decode path, as fast as oneDNN on AVX2:
        never an fp32 copy of a matrix that has blocks, so serving stays within the memory goal);
        without blocks, the oneDNN-packed weights (`Packed`, padded to `min_rows`), where packing
        is unavailable or not invariant MKL on `invariant_rows` rows of the rule `mkl_rule` measured
        (at 1 thread, whatever `threads` says, where the rule holds only there). threads: intra-op
        threads for the matmuls (default: measured per kind of step, see ThreadTuner)."""
        self.model, self.cache, self.cfg = model, cache, model.config
        self.row_pad, self.attn_bucket = row_pad, attn_bucket
        self._kv_ptrs = None  # the C layers' per-layer cache addresses (the pools never move): made once
        self.device = next(model.parameters()).device
        self.H, self.Hkv, self.D = self.cfg.num_attention_heads, self.cfg.num_key_value_heads, self.cfg.head_dim
        base = fused(model)
        blocks = base.has_blocks and base.n_plain == 0  # the block kernel: rows alike for every M
        gemm = blocks and base.prefill_view() is not base
        pk = base.packed() if row_pad > 1 and not blocks else None  # blocks: no fp32 copies (memory)
        same, mkl = (lambda n: n), False
        if row_pad <= 1 and not gemm:  # one user: plain weights or blocks, no padding
            decode = prefill = (base, same)
        elif blocks:  # decode on the blocks; prompts on their GEMM path, else the decode path
            decode = (base, same)
            prefill = (base.prefill_view(), same) if gemm else decode
        elif pk is not None:
            decode = prefill = (pk, lambda n: max(bucket_rows(n), pk.min_rows))
        else:  # MKL: the rule holds at 1 thread only on some CPUs (one_thread = 1), then pin it
            rule, one_thread = mkl_rule(base)
            decode = prefill = (base, lambda n: invariant_rows(n, rule))
            mkl, threads = True, one_thread or threads
        (self.w, self._pad), (self.w_prefill, self._pad_prefill) = decode, prefill
        self.packed = not mkl and (row_pad > 1 or gemm)  # no padding beyond min_rows
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
    def prefill_many(self, items: list[tuple[BlockTable, list[int], bool]],
                     decode_weights: bool = False) -> list[torch.Tensor]:
        """Append tokens to several sequences in one forward: their rows share every matmul,
        attention is per sequence. items: (table, tokens, all_logits) -> per item the logits of
        its last position (V,), or (T, V) with all_logits."""
        # decode_weights: speculative verification (a few rows per sequence) on the decode path
        dev, w, bs = self.device, (self.w if decode_weights else self.w_prefill), self.cache.block_size
        n = sum(len(t) for _, t, _ in items)
        M = self.padded_rows(n, prefill=not decode_weights)
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

        cl = _c_layers(w) if decode_weights and M == n else None
        if cl is not None:  # speculative verification in C: row j of a sequence attends to its
            flat, offs = [], [0]  # slots up to its own position (causal), like a decode step
            for o, T, start, table, _ in segs:
                every = [b * bs + j for b in table.blocks[:-(-(start + T) // bs)] for j in range(bs)]
                for j in range(T):
                    flat += every[:start + j + 1]
                    offs.append(len(flat))
            logits = self._run_c(cl, ids_t, pos_t, slots_t, torch.tensor(flat), torch.tensor(offs), heads)
        else:
            logits = self._prefill_python(w, M, n, ids_t, pos_t, slots_t, segs, heads, decode_weights)
        for table, toks, _ in items:
            table.num_tokens += len(toks)
        outs, o = [], 0
        for (_, _, all_logits), s in zip(items, sizes):
            outs.append(logits[o:o + s] if all_logits else logits[o])
            o += s
        return outs

    def _prefill_python(self, w, M, n, ids_t, pos_t, slots_t, segs, heads, decode_weights) -> torch.Tensor:
        dev, st = self.device, {}

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
            hsel = x[torch.tensor(heads + [heads[-1]] * (self.padded_rows(R, prefill=not decode_weights) - R),
                                  device=dev)]
            return w.logits(hsel)[:R]

        return self._forward(("decode" if decode_weights else "prefill", M.bit_length()), embed, layer, head)

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
        Hkv, D = self.Hkv, self.D
        if _c_attention(w):  # every sequence's key slots, concatenated; no groups, no padding
            flat, offs = [], [0]
            for t, n in zip(tables, lens):
                flat += [b * bs + j for b in t.blocks[:-(-(n + 1) // bs)] for j in range(bs)][:n + 1]
                offs.append(len(flat))
            flat_t, offs_t = torch.tensor(flat, dtype=torch.int64), torch.tensor(offs, dtype=torch.int64)
            by_len = {}
            cl = _c_layers(w) if M == B else None
            if cl is not None:  # every layer in one C call
                return self._decode_c(cl, tables, ids_t, pos_t, slots_t, flat_t, offs_t)
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
            if not groups:
                y[:B] = c_attention.decode_attention(q[:B], kf, vf, Hkv, Hkv * D, D, flat_t, offs_t,
                                                     torch.get_num_threads())  # bits alike at any count
                return w.attn_out_mlp(L, x, y.view(M, -1))
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

    def _decode_c(self, cl, tables, ids_t, pos_t, slots_t, flat_t, offs_t) -> torch.Tensor:
        """`decode` through the C decoder layers (`_c_layers`)."""
        logits = self._run_c(cl, ids_t, pos_t, slots_t, flat_t, offs_t, None)
        for t in tables:
            t.num_tokens += 1
        return logits

    def _run_c(self, cl, ids_t, pos_t, slots_t, flat_t, offs_t, heads) -> torch.Tensor:
        """Rows through the C decoder layers -> logits of rows `heads` (None: all). A row's bits do
        not depend on the other rows (decode step or speculative verification alike)."""
        w, M = self.w, ids_t.shape[0]
        if self._kv_ptrs is None:
            self._kv_ptrs = tuple(torch.tensor([t.data_ptr() for t in c], dtype=torch.int64)
                                  for c in (self.cache.k, self.cache.v))
        kv_ptrs = self._kv_ptrs
        kind = ("decode", M.bit_length(), "c")
        x, rope = w.embed_rows(ids_t, pos_t)
        x = run_c_tuned(self.tuner if self.fixed_threads is None else None, kind, len(w.layers), lambda n, secs: cl.run(
            x, rope, *kv_ptrs, self.Hkv * self.D, self.D, slots_t, flat_t, offs_t, self.fixed_threads or n, secs))
        with num_threads(self.fixed_threads or self.tuner.best(kind)):
            return w.logits(x if heads is None else x[torch.tensor(heads)])


class ContiguousDecoder:
    """One sequence over a contiguous KV cache (Hkv, max_len, D) per layer: the batch-1 path of
    `generate_ids`. No gathers, no padding rows; one-token steps are matrix-vector products
    (memory-bound). Both prompts and one-token steps run at the tuned thread count: whether two
    threads stream more bytes than one depends on what else the machine runs."""

    _tuners: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def __init__(self, model, max_len: int):
        self.w = w = fused(model)
        p = w.embed
        self.k = torch.empty(len(w.layers), w.Hkv, max_len, w.D, dtype=p.dtype, device=p.device)
        self.v = torch.empty_like(self.k)
        self.n = 0
        self._c = None  # the C step's constants (_step_c)
        self.last_argmax: int | None = None
        self.cpu = _on_cpu(p)
        if model not in self._tuners:
            self._tuners[model] = ThreadTuner(torch.get_num_threads())
        self.tuner = self._tuners[model]

    def _step_c(self, cl, token: int, start: int) -> torch.Tensor:
        """One token through the C decoder layers (`_c_layers`) -> logits (V,). Where the head has
        blocks (`cl.head`), the final norm, the LM head and the logits' argmax run in the same C call
        (`last_argmax`); per-decoder constants (cache pointers, key slots) are built once."""
        w = self.w
        if self._c is None:
            step = self.k.stride(0) * self.k.element_size()
            kv = tuple(torch.arange(len(w.layers), dtype=torch.int64) * step + t.data_ptr() for t in (self.k, self.v))
            n = self.k.shape[2]
            offs = torch.stack([torch.zeros(n, dtype=torch.int64), torch.arange(1, n + 1, dtype=torch.int64)], 1)
            self._c = (kv, torch.arange(n, dtype=torch.int64), offs, torch.empty(len(w.layers), dtype=torch.float64))
        kv, slots, offs, secs = self._c
        x = w.embed[token:token + 1].clone()  # F.embedding's row
        rope = (w.rope.cos[start:start + 1].to(x.dtype), w.rope.sin[start:start + 1].to(x.dtype))
        head = (torch.empty(cl.head_rows, dtype=x.dtype),
                torch.empty(1, dtype=torch.int64)) if cl.head is not None and self.cpu and c_layer.head_in_c() else None
        x = run_c_tuned(self.tuner if self.cpu else None, ("decode", 1, "c"), len(w.layers), lambda n, s: cl.run(
            x, rope, *kv, w.D, self.k.shape[2] * w.D, slots[start:start + 1], slots[:start + 1], offs[start], n, s, head),
            secs)
        self.n += 1
        if head is not None:
            self.last_argmax = int(head[1])
            return head[0]
        self.last_argmax = None
        with num_threads(self.tuner.best(("decode", 1, "c"))) if self.cpu else contextlib.nullcontext():
            return w.logits(x)[0]

    @torch.inference_mode()
    def forward(self, tokens: list[int]) -> torch.Tensor:
        """Append tokens -> logits of the last one (V,). One-token steps through the C decoder layers
        also leave the logits' argmax in `last_argmax` (None where the head ran in Python)."""
        w, start, T = (self.w.prefill_view() if len(tokens) > 1 else self.w), self.n, len(tokens)
        dev, cpu = self.k.device, self.cpu
        self.last_argmax = None  # set again by a step whose C call took it
        mask, c_attn = None, T == 1 and _c_attention(self.w)
        if c_attn:
            cl = _c_layers(w)
            if cl is not None:  # every layer (and the head) in one C call
                return self._step_c(cl, tokens[0], start)
        x, rope = w.embed_rows(torch.tensor(tokens, device=dev), torch.arange(start, start + T, device=dev))
        if c_attn:
            slots, offs = torch.arange(start + 1, dtype=torch.int64), torch.tensor([0, start + 1], dtype=torch.int64)
        if start > 0 and T > 1:
            mask = torch.arange(start + T, device=dev)[None] <= torch.arange(start, start + T, device=dev)[:, None]
        st = [x]

        def layer(li):
            L, x = w.layers[li], st[0]
            q, k, v = w.qkv(L, _norm(x, L.n1), rope)
            self.k[li, :, start:start + T] = k.transpose(0, 1)
            self.v[li, :, start:start + T] = v.transpose(0, 1)
            if c_attn:  # (Hkv, max_len, D) per layer: slot s of head g at s * D + g * max_len * D
                y = c_attention.decode_attention(q, self.k[li], self.v[li], w.Hkv, w.D, self.k.shape[2] * w.D,
                                                 slots, offs, torch.get_num_threads())  # long: Flash-Decoding
                st[0] = w.attn_out_mlp(L, x, y.reshape(1, -1))
                return
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
