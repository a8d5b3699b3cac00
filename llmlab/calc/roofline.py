"""MFU / HFU and the roofline.

- MFU (Chowdhery et al. 2022, PaLM App. B): model FLOP/s (6N + 12 L H Q T per token) over the
  peak; HFU counts the FLOPs the hardware really did, so with full activation recomputation a
  second forward: 8N per token instead of 6N (Korthikanti et al. 2022, sec. 6).
- Roofline (Williams et al. 2009): attainable FLOP/s = min(peak, intensity x bandwidth), with
  arithmetic intensity = FLOPs / bytes moved. An (m,k)x(k,n) matmul does 2mnk FLOPs over
  (mk + kn + mn) x bytes; both ceilings are measured on this machine (measure_bandwidth and
  llmlab.train.mfu.measure_matmul_flops).
"""
from __future__ import annotations

import time

import torch


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    return tokens_per_s * flops_per_token / peak_flops if peak_flops > 0 else 0.0


def hfu(tokens_per_s: float, flops_per_token: float, peak_flops: float, recompute: bool) -> float:
    """Hardware FLOPs utilisation: with full recomputation 4/3 of the model FLOPs are executed."""
    return mfu(tokens_per_s, flops_per_token * (4.0 / 3.0 if recompute else 1.0), peak_flops)


def matmul_intensity(m: int, k: int, n: int, dtype_bytes: int = 4) -> float:
    return 2.0 * m * n * k / ((m * k + k * n + m * n) * dtype_bytes)


def attainable_flops(intensity: float, peak_flops: float, bandwidth: float) -> float:
    return min(peak_flops, intensity * bandwidth)


def measure_bandwidth(nbytes: int = 64 << 20, seconds: float = 0.3) -> float:
    """Best memory bandwidth (bytes/s, read + write) of a large tensor copy on this CPU."""
    src = torch.empty(nbytes // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        dst.copy_(src)
        best = max(best, 2 * nbytes / (time.perf_counter() - t))
    return best


class ReadBandwidth:
    """The read bandwidth of a run, sampled WHILE the run's timings happen (the denominator of issue 21's
    `decode_roofline`: the bandwidth limit is this / bytes per token).

    A probe (`probe()`, called before the first timing and after each one) reads a buffer of `nbytes`
    fp32 (`sum`: 256 MB, far beyond the caches) once untimed and then `reads` times back to back, at
    each thread count, and keeps the best of those reads: a read slower than its neighbours a few ms
    apart lost its core or the memory to something else (an interrupt, another process), an artefact.
    `estimate()` is, per count, the MEDIAN over probes: the machine's deliverable bandwidth moves between
    moments (the host's other tenants, this machine's load), and the decode step it divides is itself a
    median over steps spread across the run, so both describe the same period the same way. A maximum
    over the whole run (the estimate before session 14) follows the rare fast moments and grows with the
    number of reads. `read` (tests): a callable (threads) -> seconds of one read, instead of the buffer."""

    def __init__(self, threads: int, reads: int = 3, nbytes: int = 256 << 20, read=None):
        self.counts = sorted({1, max(1, threads)})
        self.reads, self.nbytes = reads, nbytes
        self.probes: dict[int, list[float]] = {n: [] for n in self.counts}
        self._read = read
        self._buf = None if read is not None else torch.ones(nbytes // 4)

    def _one(self, n: int) -> float:
        if self._read is not None:
            return self._read(n)
        t = time.perf_counter()
        self._buf.sum()
        return time.perf_counter() - t

    def probe(self) -> None:
        from llmlab.device import num_threads
        for n in self.counts:
            with num_threads(n):
                self._one(n)  # untimed: the thread pool's wake-up, the pages' first touch
                best = min(self._one(n) for _ in range(self.reads))
            self.probes[n].append(self.nbytes / best / 1e9)

    def estimate(self) -> dict:
        """{bandwidth_gb_s_<n>t: the median over probes (GB/s); bandwidth_gb_s: the largest of those over
        the counts (as the limit always took); bandwidth_probes_gb_s_<n>t: [min, max]; bandwidth_probes: k}"""
        import statistics
        if not self.probes[self.counts[0]]:
            raise ValueError("no probe taken")
        out: dict = {"bandwidth_probes": len(self.probes[self.counts[0]])}
        for n, ps in self.probes.items():
            out[f"bandwidth_gb_s_{n}t"] = statistics.median(ps)
            out[f"bandwidth_probes_gb_s_{n}t"] = [min(ps), max(ps)]
        out["bandwidth_gb_s"] = max(out[f"bandwidth_gb_s_{n}t"] for n in self.counts)
        return out
