"""llama.cpp as a peer of `inference.py` (where llama-cpp-python is importable; it is not an
llmlab dependency: `benchmarks/install_llama_cpp.sh` builds it once).

The peer is made to do what ours does: the same GGUF file (the packaged SmolLM2, its own Q4_1 /
Q8_0 blocks), the same thread count (decode and prompt), the same prompt token ids and number of
new tokens, greedy (argmax of the last logits, EOS ignored), warm-up first; the caller alternates
it with ours and takes medians. Time is wall-clock (`perf_counter`), like ours in the roofline.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch


def available() -> bool:
    import importlib.util
    return importlib.util.find_spec("llama_cpp") is not None


class Peer:
    """One llama.cpp context on `path` at `threads` threads (decode and batch alike)."""

    def __init__(self, path, threads: int, n_ctx: int = 1024):
        from llama_cpp import Llama
        self.llm = Llama(model_path=str(path), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                         verbose=False)
        self.threads = threads
        self.vocab = self.llm.n_vocab()

    def _argmax(self) -> int:
        return int(np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1), shape=(self.vocab,)).argmax())

    def generate(self, prompt: list[int], n: int) -> list[int]:
        """Prefill `prompt`, then n greedy tokens one step at a time -> the n token ids."""
        self.llm.reset()
        self.llm.eval(prompt)
        out = []
        for _ in range(n):
            out.append(self._argmax())
            if len(out) < n:
                self.llm.eval([out[-1]])
        return out

    def step_s(self, n_steps: int, clock=time.perf_counter) -> float:
        """Median seconds of one batch-1 decode step (eval of one token + argmax) after the
        64-token prompt `_inference_profile.decode_steps_s` uses (`prompt64`), two warm-up steps
        first: the peer of our steady decode step. clock: wall (default) or time.process_time."""
        self.llm.reset()
        self.llm.eval(prompt64())
        tok, ts = self._argmax(), []
        for _ in range(n_steps + 2):
            t0 = clock()
            self.llm.eval([tok])
            tok = self._argmax()
            ts.append(clock() - t0)
        return statistics.median(ts[2:])


def prompt64(seed: int = 1) -> list[int]:
    """The 64 prompt ids of `_inference_profile.decode_steps_s` (same generator and seed)."""
    return torch.randint(100, 40000, (64,), generator=torch.Generator().manual_seed(seed)).tolist()


def greedy_agreement(ours: list[int], peer: list[int]) -> int:
    """Leading tokens on which the two greedy continuations agree (llama.cpp rounds activations to
    8 bits, our default path does not, so a near tie can part them)."""
    n = 0
    for a, b in zip(ours, peer):
        if a != b:
            break
        n += 1
    return n


def cpu_ab(model, path, rounds: int = 6, n_steps: int = 8) -> dict:
    """Batch-1 decode steps at ONE thread in process CPU time (so the figures hold under load),
    ours exact, ours int8 activations and llama.cpp, alternating (the order flips every round):
    per side the median over rounds of each round's median step, after a 64-token prompt (the same
    ids) and two warm-up steps. The limit is taken the same way: one core's read bandwidth
    (`sum` over 256 MB, best of 5, CPU time, before and after) / bytes per token, so each side's
    `*_fraction_cpu` is its tok/s over that. llama.cpp's step includes llama-cpp-python's call."""
    import os

    import _inference_profile as prof

    from llmlab.device import num_threads
    peer = Peer(path, 1, n_ctx=256)

    def ours(i8: str) -> float:  # decode_steps_s's batch-1 prompt is prompt64()
        os.environ["LLMLAB_INT8_ACTIVATIONS"] = i8
        try:
            return prof.decode_steps_s(model, 1, n_steps, clock=time.process_time)
        finally:
            os.environ.pop("LLMLAB_INT8_ACTIVATIONS", None)

    def llama() -> float:
        return peer.step_s(n_steps, time.process_time)

    def bandwidth() -> float:
        a = torch.ones(64 * 1024 * 1024)  # 256 MB: far beyond the caches
        a.sum()
        return a.numel() * 4 / prof._best(a.sum, clock=time.process_time) / 1e9

    sides = {"ours_exact": lambda: ours("0"), "ours_int8": lambda: ours("1"), "llama_cpp": llama}
    res = {k: [] for k in sides}
    with torch.inference_mode(), num_threads(1):
        bw = [bandwidth()]
        llama(), ours("0")  # warm-up
        for r in range(rounds):
            for k in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                res[k].append(sides[k]())
        bw.append(bandwidth())
    bpt = prof.bytes_per_token(model, path, 64 + n_steps)["total_mb"] * 1e6
    limit = max(bw) * 1e9 / bpt
    out = {"bandwidth_cpu_gb_s_1t": max(bw), "bytes_per_token_mb": bpt / 1e6, "limit_tok_s_1t": limit}
    for k, v in res.items():
        s = statistics.median(v)
        out.update({f"{k}_cpu_ms": s * 1e3, f"{k}_fraction_cpu": (1 / s) / limit})
    out["ours_exact_vs_llama_cpp"] = out["llama_cpp_cpu_ms"] / out["ours_exact_cpu_ms"]
    out["ours_int8_vs_llama_cpp"] = out["llama_cpp_cpu_ms"] / out["ours_int8_cpu_ms"]
    return out
