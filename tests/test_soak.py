"""Soak: `llmlab serve` (a tiny random model, loopback only) under a mixed load at its capacity for
LLMLAB_SOAK_SECONDS (default 600): streaming and non-streaming chat and completions, clients that
leave mid-stream or mid-request, malformed and out-of-bounds requests, and more clients than slots
(429s). Resident memory, open descriptors and free KV blocks of the server process are sampled
every 10 s; after the load they must come back to their idle values (memory within 5 %,
descriptors and blocks exactly). Idle is measured after a warm-up that meets every GEMM shape the
load can reach (`_warm_shapes`; docs/serve.md, "Soak"). LLMLAB_SOAK_REPORT=path writes the samples
as JSON.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:  # the openai client's HTTP library (httpx; some releases vendor it as httpx2)
    import httpx
except ImportError:
    httpx = pytest.importorskip("httpx2")

CAPACITY = 16  # max_pending of the server: the load keeps this many requests in flight
MODEL = "tiny"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bodies(rng: random.Random) -> tuple[str, dict | bytes, str]:
    """-> (path, body, kind): one request of the mix."""
    chat = {"model": MODEL, "messages": [{"role": "user", "content": rng.choice(["hi", "tell me a story",
                                                                                   "2+2?", "ok " * 30])}]}
    kind = rng.choices(["chat", "chat_stream", "cmpl", "cmpl_stream", "cancel_stream", "cancel_plain", "bad_json",
                        "bad_field", "too_long"], weights=[3, 3, 2, 2, 2, 1, 1, 2, 1])[0]
    mt = rng.randint(1, 48)
    if kind in ("chat", "chat_stream", "cancel_stream", "cancel_plain"):
        body = {**chat, "max_tokens": mt, "temperature": rng.choice([0, 0.7, 1.3]), "seed": rng.randint(0, 99),
                "stream": kind in ("chat_stream", "cancel_stream"), "ignore_eos": True}
        if kind == "chat_stream":
            body["stream_options"] = {"include_usage": True}
        return "/v1/chat/completions", body, kind
    if kind in ("cmpl", "cmpl_stream"):
        return "/v1/completions", {"model": MODEL, "prompt": ["once upon", "the"][: rng.randint(1, 2)],
                                   "max_tokens": mt, "n": rng.randint(1, 3), "logprobs": rng.choice([None, 2]),
                                   "stream": kind == "cmpl_stream", "echo": rng.random() < 0.3}, kind
    if kind == "bad_json":
        return "/v1/chat/completions", b'{"model": "tiny", "messages": [', kind
    if kind == "bad_field":
        bad = rng.choice([{"temperature": 1e-38}, {"repetition_penalty": 1e-300}, {"stream_options": "yes"},
                          {"logprobs": 100}, {"stop": ""}, {"n": 0}, {"seed": 2 ** 64}, {"top_p": 0}])
        return "/v1/chat/completions", {**chat, **bad}, kind
    return "/v1/completions", {"model": MODEL, "prompt": "word " * 400}, kind


async def _one(client: httpx.AsyncClient, rng: random.Random, counts: dict) -> None:
    path, body, kind = _bodies(rng)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        if kind in ("cancel_plain",):  # give up on a non-streaming request after a moment
            try:
                await asyncio.wait_for(client.post(path, content=data), timeout=rng.uniform(0.01, 0.3))
            except asyncio.TimeoutError:
                pass
            counts["cancelled"] = counts.get("cancelled", 0) + 1
            return
        if body.get("stream") if isinstance(body, dict) else False:
            async with client.stream("POST", path, content=data) as r:
                n = 0
                async for line in r.aiter_lines():
                    n += bool(line)
                    if kind == "cancel_stream" and n >= rng.randint(1, 4):
                        break  # leave mid-stream
            status = r.status_code
        else:
            r = await client.post(path, content=data)
            status = r.status_code
            if status >= 400:
                assert "error" in r.json(), r.text
            if status == 429:
                await asyncio.sleep(rng.uniform(0.05, 0.3))  # a polite client backs off
        counts[status] = counts.get(status, 0) + 1
    except (httpx.TransportError, asyncio.TimeoutError) as e:
        counts["transport_error"] = counts.get("transport_error", 0) + 1
        counts.setdefault("errors", []).append(repr(e))


async def _load(base: str, seconds: float, rng: random.Random, counts: dict, sample) -> None:
    """CAPACITY + 2 concurrent clients (a few 429s) for `seconds`; `sample()` every 10 s."""
    limits = httpx.Limits(max_connections=CAPACITY + 4)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits,
                                 headers={"Content-Type": "application/json"}) as client:
        t_end = time.monotonic() + seconds

        async def worker(extra: bool):
            while time.monotonic() < t_end:
                if extra:  # the clients beyond capacity come and go (some get 429)
                    await asyncio.sleep(rng.uniform(0.0, 0.5))
                await _one(client, rng, counts)

        async def sampler():
            while time.monotonic() < t_end:
                await asyncio.sleep(10)
                await asyncio.to_thread(sample, "load")

        await asyncio.gather(sampler(), *[worker(i >= CAPACITY) for i in range(CAPACITY + 2)])


def _warm_shapes(base: str, max_rows: int = 1024, per_prompt: int = 128) -> None:
    """One prefill step (and one echo LM-head pass) at every bucketed row count the load can reach.

    Why: oneDNN and ideep cache a primitive per GEMM shape, each holding native memory (about 2 MB
    per row count on this model); the engine buckets row counts (`llmlab.infer.runner.bucket_rows`:
    64 sizes up to max_prefill_tokens = 1,024), so that memory is bounded and is all taken once
    every size has been seen. Idle is measured after that, so what the soak measures is what grows
    without bound (docs/serve.md, "Soak"). Each size is k <= 8 random-token prompts of <= 128
    tokens in one request: its prompts are prefilled in one engine step."""
    from llmlab.infer.runner import bucket_rows
    rng = random.Random(1)
    for b in sorted({bucket_rows(n) for n in range(1, max_rows + 1)}):
        k = -(-b // per_prompt)
        prompts = [[rng.randrange(1000, 40000) for _ in range(b // k + (i < b % k))] for i in range(k)]
        r = httpx.post(base + "/v1/completions", timeout=120, json={
            "model": MODEL, "prompt": prompts, "max_tokens": 1, "echo": True, "logprobs": 1})
        assert r.status_code == 200, r.text


def _idle(base: str, pid: int, timeout: float = 60) -> dict:
    """Wait until nothing is in flight, then -> {rss_kib, fds, free_blocks, total_blocks}."""
    t0 = time.monotonic()
    while True:
        h = httpx.get(base + "/health", timeout=10).json()
        if h["in_flight"] == 0 and h["free_kv_blocks"] == h["total_kv_blocks"]:
            break
        assert time.monotonic() - t0 < timeout, f"server not idle after the load: {h}"
        time.sleep(0.2)
    time.sleep(1.0)  # closed connections are reaped
    return {"rss_kib": _rss_kib(pid), "fds": _fds(pid), "free_blocks": h["free_kv_blocks"],
            "total_blocks": h["total_kv_blocks"], "in_flight": h["in_flight"]}


@pytest.mark.slow
def test_soak(tmp_path):
    from tiny_serve_model import save_tiny_dir

    seconds = float(os.environ.get("LLMLAB_SOAK_SECONDS", "600"))
    model = save_tiny_dir(tmp_path / "tiny")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1])] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    proc = subprocess.Popen([sys.executable, "-m", "llmlab.cli", "serve", f"model={model}", f"served_model_name={MODEL}",
                             f"port={port}", "max_num_seqs=8", "num_blocks=96", f"max_pending={CAPACITY}",
                             "max_tokens_default=32", "drain_timeout=10"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    samples: list[dict] = []
    try:
        t0 = time.monotonic()
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() - t0 < 120, "server did not start"
            time.sleep(0.2)

        def sample(phase):
            h = httpx.get(base + "/health", timeout=30).json()
            samples.append({"t": round(time.monotonic() - t0, 1), "phase": phase, "rss_kib": _rss_kib(proc.pid),
                            "fds": _fds(proc.pid), "free_blocks": h["free_kv_blocks"], "in_flight": h["in_flight"]})

        rng, counts = random.Random(0), {}
        _warm_shapes(base)  # every GEMM shape the load can reach
        asyncio.run(_load(base, min(60.0, seconds / 4), rng, counts, sample))  # warm-up: allocator, caches
        idle = _idle(base, proc.pid)
        samples.append({"phase": "idle", **idle})
        asyncio.run(_load(base, seconds, rng, counts, sample))
        after = _idle(base, proc.pid)
        samples.append({"phase": "after", **after})
        ok = httpx.post(base + "/v1/chat/completions", timeout=60, json={
            "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        report = {"seconds": seconds, "capacity": CAPACITY, "counts": {str(k): v for k, v in counts.items()
                                                                        if k != "errors"},
                  "transport_errors": counts.get("errors", [])[:5], "idle": idle, "after": after,
                  "rss_ratio": after["rss_kib"] / idle["rss_kib"], "samples": samples}
        if os.environ.get("LLMLAB_SOAK_REPORT"):
            Path(os.environ["LLMLAB_SOAK_REPORT"]).write_text(json.dumps(report, indent=1))
        assert ok.status_code == 200
        assert not any(str(k).startswith("5") for k in counts), counts
        assert counts.get(200, 0) > 0 and counts.get(400, 0) > 0
        assert after["free_blocks"] == after["total_blocks"] == idle["free_blocks"]
        assert after["fds"] == idle["fds"], (idle, after)
        assert abs(report["rss_ratio"] - 1) <= 0.05, (f"RSS after the load is {report['rss_ratio']:.3f} x idle "
                                                      f"({idle['rss_kib']} -> {after['rss_kib']} KiB)")
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        if os.environ.get("LLMLAB_SOAK_REPORT"):
            Path(os.environ["LLMLAB_SOAK_REPORT"] + ".log").write_text(out or "")
