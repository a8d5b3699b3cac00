"""Where a decode step's time goes, and how far it is from the machine's limits (`inference.py --profile`).

- `roofline()`: this machine's read bandwidth (GB/s: a 256 MB fp32 `sum`, best of several) and fp32
  GEMM ceiling (GFLOP/s: torch.mm 1024^3), each at 1 thread and at torch's count, best kept.
- `bytes_per_token(model)`: the bytes a batch-1 token must read: every matrix's GGUF blocks (the
  format's own size, what llama.cpp reads; the LM head's tied embedding once), norms, and the
  KV cache at the context measured. The bandwidth limit is bandwidth / bytes per token.
- `breakdown(...)`: wraps the inference forward's pieces with timers (matmuls by shape, norms,
  rotary + q/k/v split, residual/SiLU, attention (C kernel or SDPA), attention gathers, KV writes) and runs
  batch-1 decode (`ContiguousDecoder`, what `generate_ids` uses) and a 32-row paged decode step
  (`PagedRunner.decode`, what the engine uses); "python + dispatch" is the step's time not inside
  any timed piece. Sampling is timed apart on the step's logits. Timers cost ~1 us per call
  (~300 calls a step): included in the pieces they wrap. Where the C decoder layers run
  (`llmlab/kernels/layer.c`), their pieces come from the C code's own timers ("... [C]"); the
  breakdown is then taken again on the Python layers (LLMLAB_C_LAYERS=0) in the same run.
"""
from __future__ import annotations

import statistics
import time
from collections import defaultdict

import torch

from llmlab.calc.roofline import ReadBandwidth


def _best(fn, n=5, clock=time.perf_counter) -> float:
    ts = []
    for _ in range(n):
        t0 = clock()
        fn()
        ts.append(clock() - t0)
    return min(ts)


def roofline(threads: int) -> dict:
    from llmlab.device import num_threads
    a = torch.ones(64 * 1024 * 1024)  # 256 MB: far beyond the caches
    x, y = torch.randn(1024, 1024), torch.randn(1024, 1024)
    out = {}
    for n in sorted({1, threads}):
        with num_threads(n):
            a.sum()
            out[f"bandwidth_gb_s_{n}t"] = a.numel() * 4 / _best(a.sum) / 1e9
            torch.mm(x, y)
            out[f"gemm_gflop_s_{n}t"] = 2 * 1024 ** 3 / _best(lambda: torch.mm(x, y)) / 1e9
    out["bandwidth_gb_s"] = max(v for k, v in out.items() if k.startswith("bandwidth"))
    out["gemm_gflop_s"] = max(v for k, v in out.items() if k.startswith("gemm"))
    return out


def bytes_per_token(model, path, context: int) -> dict:
    """GGUF bytes of every matrix a token multiplies by (tied head counted once) + 1-D weights +
    the K and V it attends over at `context` positions (fp32 cache)."""
    from llmlab.model.gguf_file import GGUFFile
    f = GGUFFile(path)
    weights = sum(t.nbytes for t in f.tensors)  # every tensor is read once per token (embedding: one row,
    emb = next(t for t in f.tensors if t.name == "token_embd.weight")  # but tied: it is the LM head)
    if "output.weight" in {t.name for t in f.tensors}:
        weights -= emb.nbytes  # untied: the embedding is only looked up
    cfg = model.config
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 4 * context
    ours = sum(q.nbytes for q, _ in getattr(model, "quantized", {}).values())
    return {"weights_mb": weights / 1e6, "kv_mb": kv / 1e6, "total_mb": (weights + kv) / 1e6,
            "kernel_repacked_weights_mb": ours / 1e6}


def matmul_flops(model, rows: int) -> float:
    """2 * rows * every matmul weight's size (q/k/v, o, gate/up, down, LM head)."""
    cfg = model.config
    d, f, H, Hkv, D, L = (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads,
                          cfg.num_key_value_heads, cfg.head_dim, cfg.num_hidden_layers)
    per_layer = d * (H + 2 * Hkv) * D + H * D * d + 3 * d * f
    return 2.0 * rows * (L * per_layer + d * cfg.vocab_size)


class _Timers:
    """Inclusive timers with children subtracted: self[label] is time inside a wrapped call and
    not inside another wrapped call it made."""

    def __init__(self):
        self.self_s, self.calls, self.stack, self.undo = defaultdict(float), defaultdict(int), [], []

    def wrap(self, owner, attr, label):
        orig = getattr(owner, attr)

        def timed(*a, **kw):
            name = label(*a, **kw) if callable(label) else label
            self.stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                dt = time.perf_counter() - t0
                child = self.stack.pop()
                self.self_s[name] += dt - child
                self.calls[name] += 1
                if self.stack:
                    self.stack[-1] += dt
        setattr(owner, attr, timed)
        self.undo.append((owner, attr, orig))

    def restore(self):
        for owner, attr, orig in reversed(self.undo):
            setattr(owner, attr, orig)


def _lin_label(model):
    cfg = model.config
    d, f, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    names = {((cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim, d): "qkv",
             (d, cfg.num_attention_heads * cfg.head_dim): "o", (2 * f, d): "gate_up", (d, f): "down",
             (V, d): "lm_head"}

    def label(x, w, b, *rest, **kw):  # _lin(x, w, b) or the block kernel's qmatmul(x, QuantWeight, b, ...)
        from llmlab.infer.fused import QLinear, _fp32
        from llmlab.kernels.ggml import QuantWeight
        shape = ((w.q.rows, w.q.k) if type(w) is QLinear else (w.rows, w.k) if type(w) is QuantWeight
                 else tuple(_fp32(getattr(w, "w", w)).shape))
        return f"matmul {names.get(shape, '?')} {shape[1]}->{shape[0]}"
    return label


def _instrument(model, cache) -> _Timers:
    import torch.nn.functional as F

    from llmlab.infer import fused as fz, runner as rn
    T = _Timers()
    T.wrap(fz, "_lin", _lin_label(model))
    # the block kernel under _lin, and the int8 LM head (`FusedModel.logits` calls it directly): the
    # head is its own piece on every path, also where the C layers time the layers' products
    T.wrap(fz, "qmatmul", _lin_label(model))
    T.wrap(fz, "_norm", "norms (RMSNorm)")
    T.wrap(rn, "_norm", "norms (RMSNorm)")
    T.wrap(fz.FusedModel, "qkv", "rotary + q/k/v split")
    T.wrap(fz.FusedModel, "attn_out_mlp", "residual adds + SiLU*up")
    T.wrap(fz.FusedModel, "embed_rows", "embedding + rope tables")
    T.wrap(F, "scaled_dot_product_attention", "attention (SDPA)")
    T.wrap(rn.c_attention, "decode_attention", "attention (C decode kernel)")
    T.wrap(torch.Tensor, "index_select", "attention gathers (paged K/V, rows)")
    T.wrap(torch.Tensor, "index_copy_", "attention gathers (paged K/V, rows)")
    if cache is not None:
        T.wrap(type(cache), "write", "KV cache writes")
    T.wrap(rn.c_layer.Layers, "run", C_CALL)
    return T


C_CALL = "C layers: call, scratch, pointers"  # Layers.run's time outside the pieces layer.c times


def _add_c_pieces(T: _Timers, prof: torch.Tensor) -> None:
    """The C decoder layers' own piece times (layer.c's `prof`) into the table: each piece named
    "<piece> [C]", taken out of Layers.run's self time."""
    from llmlab.kernels import layer as c_layer
    for name, s in zip(c_layer.PIECES, prof.tolist()):
        if s > 0:
            T.self_s[f"{name} [C]"] += s
            T.self_s[C_CALL] -= s


def _run_profiled(model, cache, step, n_steps: int) -> tuple[dict, float]:
    """Per-step seconds by piece (medians would hide nothing here: sums / n_steps) and the step time."""
    from llmlab.kernels import layer as c_layer
    T = _instrument(model, cache)
    c_layer.Layers.profile = prof = torch.zeros(len(c_layer.PIECES), dtype=torch.float64)
    try:
        T.wrap(type(step.__self__), step.__name__, "python + dispatch (not in a timed piece)")
        run = getattr(step.__self__, step.__name__)
        total = 0.0
        for i in range(n_steps):
            t0 = time.perf_counter()
            run(*step.args(i))
            total += time.perf_counter() - t0
    finally:
        T.restore()
        c_layer.Layers.profile = None
    _add_c_pieces(T, prof)
    return {k: v / n_steps for k, v in T.self_s.items()}, total / n_steps


class _Step:
    """A bound method to call with args(i) for step i (for _run_profiled)."""

    def __init__(self, obj, name, args):
        self.__self__, self.__name__, self.args = obj, name, args


def _paged_batch(model, batch: int, n_steps: int, g):
    """`batch` sequences with random contexts of 16..160 tokens prefilled into one paged cache,
    each with room for n_steps more tokens: (cache, runner, block tables)."""
    from llmlab.infer.paged import BlockTable, PagedKVCache
    from llmlab.infer.runner import PagedRunner
    cache = PagedKVCache.for_model(model, batch * 20)
    runner = PagedRunner(model, cache)
    tables = []
    for n in torch.randint(16, 160, (batch,), generator=g).tolist():
        t = BlockTable()
        cache.reserve(t, n + n_steps + 8)
        runner.prefill(t, torch.randint(100, 40000, (n,), generator=g).tolist())
        tables.append(t)
    return cache, runner, tables


def breakdown(model, n_steps: int = 16, batch: int = 32, seed: int = 0) -> dict:
    """{'batch1': {...}, 'batch32': {...}}: seconds per step by piece, step time, sampling time,
    on the default path (the C decoder layers where they apply), then the same on the Python
    layers (LLMLAB_C_LAYERS=0: 'batch1 python layers', ...) in the same run."""
    import os
    out = _breakdown(model, n_steps, batch, seed)
    os.environ["LLMLAB_C_LAYERS"] = "0"
    try:
        out.update({f"{k} python layers": v for k, v in _breakdown(model, n_steps, batch, seed).items()})
    finally:
        os.environ.pop("LLMLAB_C_LAYERS", None)
    return out


def _breakdown(model, n_steps: int, batch: int, seed: int) -> dict:
    from llmlab.infer.runner import ContiguousDecoder
    from llmlab.infer.sampling import SamplingParams, choose
    g = torch.Generator().manual_seed(seed)
    out = {}
    # batch 1: a 64-token prompt, then one-token steps (untimed warm-up steps first)
    dec = ContiguousDecoder(model, 64 + 2 * n_steps + 8)
    logits = dec.forward(torch.randint(100, 40000, (64,), generator=g).tolist())
    for _ in range(4):
        logits = dec.forward([int(logits.argmax())])
    toks = torch.randint(100, 40000, (n_steps,), generator=g).tolist()
    pieces, step_s = _run_profiled(model, None, _Step(dec, "forward", lambda i: ([toks[i]],)), n_steps)
    out["batch1"] = _summary(pieces, step_s, logits[None], choose, SamplingParams)
    # 32 sequences with mixed contexts (16..160 tokens), one paged decode step each
    cache, runner, tables = _paged_batch(model, batch, n_steps, g)
    ids = [1] * batch
    for _ in range(2):
        logits = runner.decode(tables, ids)
    pieces, step_s = _run_profiled(model, cache, _Step(runner, "decode", lambda i: (tables, ids)), n_steps)
    out[f"batch{batch}"] = _summary(pieces, step_s, logits, choose, SamplingParams)
    for t in tables:
        cache.free(t)
    return out


def _summary(pieces: dict, step_s: float, logits, choose, SamplingParams) -> dict:
    greedy, sampled = SamplingParams(), SamplingParams(temperature=0.8, top_p=0.95, top_k=50)
    gen = torch.Generator().manual_seed(0)
    samp = {"sampling greedy (argmax)": _med(lambda: [choose(r, greedy) for r in logits]),
            "sampling T=0.8 top-k/p": _med(lambda: [choose(r, sampled, gen) for r in logits])}
    return {"step_ms": step_s * 1e3, "pieces_ms": {k: v * 1e3 for k, v in sorted(pieces.items(), key=lambda kv: -kv[1])},
            "sampling_ms": {k: v * 1e3 for k, v in samp.items()}}


def _med(fn, n=7) -> float:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def print_breakdown(bd: dict) -> None:
    for kind, r in bd.items():
        print(f"--- {kind}: {r['step_ms']:.2f} ms per step")
        for k, v in r["pieces_ms"].items():
            print(f"  {k:44s} {v:8.3f} ms  {100 * v / r['step_ms']:5.1f}%")
        for k, v in r["sampling_ms"].items():
            print(f"  {k:44s} {v:8.3f} ms  (apart from the step)")


def _rss_mb(pid: int) -> dict:
    out = {}
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def serve_memory(model, path, port: int = 0) -> dict:
    """Resident memory of `llmlab serve model=smollm2` after answering two chat requests, against
    the budget GGUF size + KV pool (its allocated size, the engine's default) + 150 MB. The pool is
    zero-filled lazily, so only its touched pages count in RSS; `baseline_python_torch_mb` is a
    bare `python -c 'import torch'` for scale."""
    import json
    import os
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    from llmlab.infer.engine import EngineConfig
    ec, cfg = EngineConfig(), model.config
    blocks = ec.num_blocks or ec.max_num_seqs * 512 // ec.block_size
    kv = (blocks + 1) * ec.block_size * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * 4
    if not port:  # a free one: a fixed port made the run fail whenever another server held it
        import socket
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    cli = Path(sys.executable).parent / "llmlab"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen([str(cli), "serve", "model=smollm2", f"port={port}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.perf_counter()
    try:
        body = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "Capital of France?"}],
                           "max_tokens": 16, "temperature": 0}).encode()
        answered = 0
        while answered < 2:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=300) as r:
                    json.loads(r.read())
                answered += 1
            except OSError:
                if proc.poll() is not None or time.perf_counter() - t0 > 400:
                    raise RuntimeError("server did not answer") from None
                time.sleep(0.2)
        rss = _rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    base = subprocess.run([sys.executable, "-c", "import torch, os; print(open(f'/proc/{os.getpid()}/status').read())"],
                          capture_output=True, text=True).stdout
    base_mb = next(int(ln.split()[1]) / 1024 for ln in base.splitlines() if ln.startswith("VmRSS:"))
    gguf_mb = Path(path).stat().st_size / 1e6 * 1e6 / 2 ** 20
    limit = gguf_mb + kv / 2 ** 20 + 150
    return {"rss_mb": rss["VmRSS"], "peak_rss_mb": rss["VmHWM"], "gguf_mb": gguf_mb, "kv_pool_mb": kv / 2 ** 20,
            "limit_mb": limit, "baseline_python_torch_mb": base_mb, "rss_over_limit": rss["VmRSS"] / limit}


def decode_steps_s(model, batch: int, n_steps: int, seed: int = 1, clock=time.perf_counter) -> float:
    """Median seconds of one decode step: batch 1 on `ContiguousDecoder` (64-token context),
    else `batch` sequences (contexts 16..160) on `PagedRunner.decode`. clock: batch 1's timer
    (wall by default; time.process_time for CPU time)."""
    from llmlab.infer.runner import ContiguousDecoder
    g = torch.Generator().manual_seed(seed)
    ts = []
    if batch == 1:
        dec = ContiguousDecoder(model, 64 + n_steps + 8)
        logits = dec.forward(torch.randint(100, 40000, (64,), generator=g).tolist())
        for i in range(n_steps + 2):  # greedy: the argmax from the C call where the head ran there
            t0 = clock()
            logits = dec.forward([dec.last_argmax if dec.last_argmax is not None else int(logits.argmax())])
            ts.append(clock() - t0)
        return statistics.median(ts[2:])
    cache, runner, tables = _paged_batch(model, batch, n_steps, g)
    for i in range(n_steps + 2):
        t0 = time.perf_counter()
        runner.decode(tables, [1] * batch)
        ts.append(time.perf_counter() - t0)
    for t in tables:
        cache.free(t)
    return statistics.median(ts[2:])


def limits(model, path, threads: int, quick: bool, peer=None) -> tuple[dict, dict, dict]:
    """The roofline columns, all measured in this call: -> (fields for `ours`, ratios, peer's).
    decode_roofline = batch-1 steady decode tok/s / (read bandwidth / bytes per token), the read
    bandwidth the median of probes taken between the timings (`ReadBandwidth`; `*_oldbw`: against
    the run's best read before and after, the estimate until session 14);
    batch32_gemm_eff = matmul FLOPs of a 32-row decode step / (step time x fp32 GEMM ceiling).
    The same two with the int8-activation option (`*_int8`) and on the Python layers
    (`*_pylayers`, LLMLAB_C_LAYERS=0: the path before the C decoder layers), all alternating.
    peer: a `_inference_llamacpp.Peer` or None: its steady batch-1 step is timed after each round
    of ours, and its `llama_cpp_decode_roofline` divides by the same limit."""
    import os
    n = 8 if quick else 24
    # (int8 activations, C decoder layers) -> tag; the Python layers ("_pylayers") are the path
    # before the C layers, timed in the same run
    variants = {("0", "1"): "", ("1", "1"): "_int8", ("0", "0"): "_pylayers"}
    steps = {v: ([], []) for v in variants}
    peer_steps = []
    with torch.inference_mode():
        roof = roofline(threads)
        bw = ReadBandwidth(threads)  # the denominator: probes between the timings (session 14)
        bw.probe()
        if peer is not None:
            peer.step_s(2)  # warm-up (model pages, thread pool)
        for v in [*variants, "peer", *variants, "peer"]:
            if v == "peer":
                if peer is not None:
                    peer_steps.append(peer.step_s(n))
                    bw.probe()
                continue
            os.environ["LLMLAB_INT8_ACTIVATIONS"], os.environ["LLMLAB_C_LAYERS"] = v
            try:
                steps[v][0].append(decode_steps_s(model, 1, n))
                steps[v][1].append(decode_steps_s(model, 32, max(4, n // 3)))
            finally:
                os.environ.pop("LLMLAB_INT8_ACTIVATIONS", None)
                os.environ.pop("LLMLAB_C_LAYERS", None)
            bw.probe()
        roof2 = roofline(threads)  # again after: the machine's load moves; the best of both was the limit
    for key in ("bandwidth_gb_s", "gemm_gflop_s"):
        roof[key] = max(roof[key], roof2[key])
    bpt = bytes_per_token(model, path, 64 + n)
    est = bw.estimate()
    limit_tok_s = est["bandwidth_gb_s"] * 1e9 / (bpt["total_mb"] * 1e6)
    old_limit = roof["bandwidth_gb_s"] * 1e9 / (bpt["total_mb"] * 1e6)  # before session 14: the run's best read
    flops = matmul_flops(model, 32)
    ours = {"bandwidth_gb_s": est["bandwidth_gb_s"], "bandwidth_gb_s_old": roof["bandwidth_gb_s"],
            "bandwidth_probes": est["bandwidth_probes"],
            "bandwidth_probes_gb_s": est[f"bandwidth_probes_gb_s_{max(bw.counts)}t"],
            "bytes_per_token_mb": bpt["total_mb"],
            "bandwidth_limit_tok_s": limit_tok_s, "gemm_ceiling_gflop_s": roof["gemm_gflop_s"],
            "batch32_matmul_gflop": flops / 1e9}
    ratios = {}
    for v, tag in variants.items():
        step1, step32 = min(steps[v][0]), min(steps[v][1])  # best of the two alternations
        ours.update({f"decode_steady_tok_s{tag}": 1 / step1, f"batch32_step_ms{tag}": step32 * 1e3})
        ratios.update({f"decode_roofline{tag}": (1 / step1) / limit_tok_s,
                       f"decode_roofline{tag}_oldbw": (1 / step1) / old_limit,
                       f"batch32_gemm_eff{tag}": flops / (step32 * roof["gemm_gflop_s"] * 1e9)})
    peer_out = {}
    if peer_steps:
        tok_s = 1 / min(peer_steps)  # best of the two alternations, as ours
        peer_out = {"llama_cpp_decode_steady_tok_s": tok_s, "llama_cpp_decode_roofline": tok_s / limit_tok_s,
                    "llama_cpp_decode_roofline_oldbw": tok_s / old_limit, "llama_cpp_threads": peer.threads}
        ratios.update({"decode_steady_vs_llama_cpp": ours["decode_steady_tok_s"] / tok_s,
                       "decode_steady_vs_llama_cpp_int8": ours["decode_steady_tok_s_int8"] / tok_s})
    return ours, ratios, peer_out


def c_layers_ab(model, rounds: int = 8, n_steps: int = 8) -> dict:
    """Batch-1 decode step, C decoder layers vs the Python layers (LLMLAB_C_LAYERS=0), exact and
    int8, alternating within each round (the order flips every round), one thread: per variant
    the median over rounds of each round's median step, wall-clock and process CPU time (CPU time
    leaves out the waits for a core that a loaded machine adds to the wall-clock)."""
    import os

    from llmlab.device import num_threads
    from llmlab.infer.runner import ContiguousDecoder
    g = torch.Generator().manual_seed(3)
    variants = [("1", "0"), ("0", "0"), ("1", "1"), ("0", "1")]  # (C layers, int8)
    res = {v: ([], []) for v in variants}
    with torch.inference_mode(), num_threads(1):
        for r in range(rounds):
            for v in (variants if r % 2 == 0 else variants[::-1]):
                os.environ["LLMLAB_C_LAYERS"], os.environ["LLMLAB_INT8_ACTIVATIONS"] = v
                try:
                    dec = ContiguousDecoder(model, 64 + n_steps + 8)
                    logits = dec.forward(torch.randint(100, 40000, (64,), generator=g).tolist())
                    wall, cpu = [], []
                    for i in range(n_steps + 2):
                        t0, c0 = time.perf_counter(), time.process_time()
                        logits = dec.forward([int(logits.argmax())])
                        wall.append(time.perf_counter() - t0), cpu.append(time.process_time() - c0)
                    res[v][0].append(statistics.median(wall[2:])), res[v][1].append(statistics.median(cpu[2:]))
                finally:
                    os.environ.pop("LLMLAB_C_LAYERS", None), os.environ.pop("LLMLAB_INT8_ACTIVATIONS", None)
    out = {}
    for (c, i8), (wall, cpu) in res.items():
        tag = f"{'c' if c == '1' else 'python'}_layers_{'int8' if i8 == '1' else 'exact'}"
        out[f"{tag}_ms"], out[f"{tag}_cpu_ms"] = statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3
    for kind in ("exact", "int8"):
        out[f"speedup_{kind}"] = out[f"python_layers_{kind}_ms"] / out[f"c_layers_{kind}_ms"]
        out[f"speedup_{kind}_cpu"] = out[f"python_layers_{kind}_cpu_ms"] / out[f"c_layers_{kind}_cpu_ms"]
    return out
