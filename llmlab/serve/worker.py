"""The engine on its own thread, fed by the server's async handlers.

Only this thread touches the Engine (it is not thread-safe): handlers post "add" / "cancel"
commands to an inbox and read their request's Outputs from an asyncio.Queue, filled with
`loop.call_soon_threadsafe`. Between two engine steps the inbox is drained, so new requests join
the running batch at the next token boundary. Admission control: at most `max_pending`
requests may be queued or running; beyond that `submit` raises Overloaded (HTTP 429).
"""
from __future__ import annotations

import asyncio
import queue
import threading
import uuid

from llmlab.infer.engine import Engine, Output
from llmlab.infer.sampling import SamplingParams
from llmlab.log import get_logger


_LIBC = None


def trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc `malloc_trim`): freed memory otherwise stays in
    the per-thread malloc arenas (it lowered a soak's idle RSS by 60 MB; the creep under load was
    oneDNN's per-shape caches, see `llmlab.infer.runner.bucket_rows` and docs/serve.md). Called
    when the engine goes idle; a no-op off glibc."""
    global _LIBC
    try:
        if _LIBC is None:
            import ctypes
            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        _LIBC = False


class Overloaded(RuntimeError):
    """Too many requests in flight."""


class ShuttingDown(RuntimeError):
    """The server is draining and accepts no new work."""


class EngineWorker:
    def __init__(self, engine: Engine, max_pending: int = 256):
        self.engine, self.max_pending = engine, max_pending
        self.inbox: queue.Queue = queue.Queue()
        self.streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self.lock = threading.Lock()
        self.accepting = True
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="llmlab-engine", daemon=True)

    def start(self) -> "EngineWorker":
        self.thread.start()
        return self

    @property
    def pending(self) -> int:
        return len(self.streams)

    def submit(self, prompt_ids: list[int], params: SamplingParams, prompt_logprobs: int | None = None
               ) -> tuple[str, asyncio.Queue]:
        """-> (request id, queue of Outputs; an Exception item means the request failed)."""
        with self.lock:
            if not self.accepting:
                raise ShuttingDown("server is shutting down")
            if len(self.streams) >= self.max_pending:
                raise Overloaded(f"{len(self.streams)} requests in flight (limit {self.max_pending})")
            rid = f"req-{uuid.uuid4().hex[:16]}"
            q: asyncio.Queue = asyncio.Queue()
            self.streams[rid] = (asyncio.get_running_loop(), q)
        self.inbox.put(("add", rid, prompt_ids, params, prompt_logprobs))
        return rid, q

    def release(self, rid: str) -> None:
        """Free a request's slot now and its blocks at the next token boundary (finished, failed,
        client gone or stop pressed). Idempotent: every exit path of a handler calls it."""
        with self.lock:
            live = self.streams.pop(rid, None) is not None
        if live:
            self.inbox.put(("cancel", rid))

    cancel = release

    def drain(self, timeout: float) -> bool:
        """Stop accepting (new requests get ShuttingDown -> 503); wait up to `timeout` s for the
        in-flight ones to be answered. -> True if all were."""
        import time
        with self.lock:
            self.accepting = False
        t_end = time.monotonic() + timeout
        while (self.engine.has_work() or self.streams) and time.monotonic() < t_end:
            time.sleep(0.05)
        return not self.streams

    def _send(self, rid: str, item) -> None:
        with self.lock:
            target = self.streams.get(rid)
        if target is not None:
            loop, q = target
            try:
                loop.call_soon_threadsafe(q.put_nowait, item)
            except RuntimeError:  # the handler's loop is closed: nobody listens any more
                self.inbox.put(("cancel", rid))

    def _drain_inbox(self, block: bool) -> None:
        try:
            cmd = self.inbox.get(timeout=0.05) if block else self.inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            if cmd[0] == "add":
                _, rid, ids, params, plp = cmd
                if rid in self.streams:  # not cancelled before it started
                    try:
                        self.engine.add_request(ids, params, rid, plp)
                    except ValueError as e:
                        self._send(rid, e)
            elif cmd[0] == "cancel":
                self.engine.cancel(cmd[1])
            try:
                cmd = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _loop(self) -> None:
        log = get_logger()
        busy = False
        while not self._stop.is_set():
            self._drain_inbox(block=not self.engine.has_work())
            if not self.engine.has_work():
                if busy:  # just went idle
                    busy = False
                    trim_heap()
                continue
            busy = True
            try:
                outs: list[Output] = self.engine.step()
            except Exception as e:  # never let one bad step kill the server: fail what is in flight
                log.exception("engine step failed")
                for rid in list(self.engine.requests):
                    self.engine.cancel(rid)
                    self._send(rid, RuntimeError(f"engine error: {e}"))
                continue
            for o in outs:
                if o.finish_reason == "error":  # this request alone failed; the batch went on
                    log.warning(f"request {o.request_id} failed: {o.error}")
                    self._send(o.request_id, RuntimeError(o.error))
                else:
                    self._send(o.request_id, o)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop accepting, let in-flight requests finish (up to timeout), then stop the thread."""
        self.drain(timeout)
        self._stop.set()
        self.thread.join(timeout=5)
