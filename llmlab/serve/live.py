"""Run the server in a background thread on a free loopback port (tests, benchmarks, notebooks)."""
from __future__ import annotations

import contextlib
import socket
import threading
import time


@contextlib.contextmanager
def live_server(model, tok, name: str = "m", max_pending: int = 64, max_tokens_default: int = 32, retrieval=None,
                vision=None, **engine_kw):
    """Yields (base_url, worker); the server stops (gracefully) when the block exits. vision: a
    vision-language model (llmlab.infer.vision) that answers image_url parts."""
    import uvicorn

    from llmlab.infer.engine import Engine
    from llmlab.serve.app import create_app
    from llmlab.serve.worker import EngineWorker

    engine = Engine(model, tok, **engine_kw)
    worker = EngineWorker(engine, max_pending).start()
    app = create_app(worker, tok, name, max_tokens_default=max_tokens_default, drain_timeout=10, retrieval=retrieval,
                     vision=vision)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    t0 = time.monotonic()
    while not server.started:
        if time.monotonic() - t0 > 30 or not th.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", worker
    finally:
        server.should_exit = True
        th.join(timeout=30)
