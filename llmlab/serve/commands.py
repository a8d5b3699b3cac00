"""CLI verb: `llmlab serve` (OpenAI-compatible API + web chat on one port)."""
from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field

from llmlab.verb import Verb, verb
from llmlab.errors import UserError
from llmlab.infer.engine import EngineConfig

VERBS: dict[str, Verb] = {}


@dataclass
class ServeConfig:
    model: str = field(default="smollm2", metadata={"help": "packaged name, .gguf file or HF-style dir"})
    served_model_name: str = field(default="", metadata={"help": "the id clients send as 'model' (default: model)"})
    host: str = "127.0.0.1"
    port: int = 8000
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(max_num_seqs=32),
                                 metadata={"help": "engine settings (llmlab.infer.engine.EngineConfig); "
                                                   "keys may be given flat"})
    max_pending: int = field(default=128, metadata={"help": "requests queued or running; beyond: HTTP 429"})
    max_tokens_default: int = field(default=256, metadata={"help": "completion cap when a request sets none"})
    drain_timeout: float = field(default=30.0, metadata={"help": "on SIGTERM/Ctrl-C: seconds to finish in-flight "
                                                                 "requests (new ones get 503) before exiting"})
    device: str = "auto"
    dtype: str = "auto"
    rag_index: str = field(default="", metadata={"help": "a `llmlab rag index` folder: chat requests with "
                                                         "\"rag\": true answer from it with [n] sources"})
    rag_k: int = field(default=3, metadata={"help": "chunks retrieved per request (a request may set rag.k)"})
    rag_default: bool = field(default=False, metadata={"help": "retrieve for requests that do not say \"rag\""})

    def __post_init__(self):
        for key in ("max_pending", "max_tokens_default"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        if not 0 <= self.drain_timeout <= 3600:
            raise ValueError(f"drain_timeout must be in [0, 3600] s, got {self.drain_timeout}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if not 1 <= self.rag_k <= 20:
            raise ValueError(f"rag_k must be in [1, 20], got {self.rag_k}")
        if self.rag_default and not self.rag_index:
            raise ValueError("rag_default=true needs rag_index=PATH")


def build(cfg: ServeConfig):
    """-> (FastAPI app, EngineWorker), model loaded; the worker thread is started."""
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    from llmlab.serve.app import create_app
    from llmlab.serve.worker import EngineWorker
    from llmlab.infer.vision import load_vision_model

    retrieval = None
    if cfg.rag_index:  # open the index first: a bad path fails before the model loads
        from llmlab.log import get_logger
        from llmlab.serve.retrieval import Retrieval
        retrieval = Retrieval(cfg.rag_index, cfg.rag_k, cfg.rag_default)
        info = retrieval.info_sync()
        get_logger().info(f"RAG index {info['index']}: {info['sources']} sources, {info['chunks']} chunks"
                          + (" (empty: requests with rag get a 400 until documents are added)" if not info["chunks"] else ""))
    vm = load_vision_model(cfg.model)  # a `llmlab mm llava` run: images to it, text turns to its LM
    model, tok = (vm.lm, vm.tokenizer) if vm is not None else load_model_and_tokenizer(cfg.model, cfg.device, cfg.dtype)
    if vm is None:  # the engine multiplies GGUF blocks: their fp32 copies need not stay resident
        from llmlab.kernels.ggml import release_dense
        from llmlab.log import get_logger
        from llmlab.serve.worker import trim_heap
        freed = release_dense(model)
        if freed:
            trim_heap()
            get_logger().info(f"serving from the GGUF blocks: {freed / 2 ** 20:.0f} MB of fp32 weights released")
    worker = EngineWorker(cfg.engine.build(model, tok), cfg.max_pending).start()
    app = create_app(worker, tok, cfg.served_model_name or cfg.model, cfg.max_tokens_default, cfg.drain_timeout,
                     retrieval, vm)
    return app, worker


def _draining_server(uvicorn, config, worker, drain_timeout: float, log):
    """uvicorn.Server that, on the first SIGTERM/SIGINT, keeps listening while it drains: new
    requests get 503 + /health says shutting_down, in-flight ones finish (up to drain_timeout), then
    it stops and the process exits 0 (a second signal exits at once)."""

    class DrainingServer(uvicorn.Server):
        draining = False

        def handle_exit(self, sig, frame):
            if self.draining:
                log.warning("second signal: exiting now")
                self.should_exit = self.force_exit = True
                return
            self.draining = True
            log.info(f"received {signal.Signals(sig).name}: draining {worker.pending} in-flight request(s) "
                     f"for up to {drain_timeout:g}s; new requests get 503")

            def drain():
                done = worker.drain(drain_timeout)
                log.info("drained; stopping" if done else f"drain timeout: {worker.pending} request(s) cut off")
                self.should_exit = True
            threading.Thread(target=drain, name="llmlab-drain", daemon=True).start()

        def capture_signals(self):  # uvicorn re-raises the signal after shutdown (exit 143): we exit 0
            import contextlib

            @contextlib.contextmanager
            def ctx():
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                old = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
                try:
                    yield
                finally:
                    for s, h in old.items():
                        signal.signal(s, h)
            return ctx()

    return DrainingServer(config)


@verb(VERBS, "serve", ServeConfig)
def run_serve(cfg: ServeConfig) -> int:
    """OpenAI-compatible server (/v1/chat/completions, /v1/completions) + web chat

    Example: llmlab serve configs/serve_smollm2.yaml port=8000
      (pictures: llmlab serve model=runs/mm_llava takes OpenAI image_url parts as base64 data URLs,
       and the web chat gets an Image button)
    """
    import uvicorn

    from llmlab.log import get_logger

    log = get_logger()
    app, worker = build(cfg)
    log.info(f"serving {cfg.served_model_name or cfg.model} on http://{cfg.host}:{cfg.port} "
             f"(web chat at /, OpenAI API at /v1)")
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning",
                            timeout_graceful_shutdown=int(cfg.drain_timeout) + 5)
    server = _draining_server(uvicorn, config, worker, cfg.drain_timeout, log)
    try:
        server.run()
    except (OSError, SystemExit) as e:  # uvicorn exits 1 when it cannot bind
        raise UserError(f"cannot listen on {cfg.host}:{cfg.port}: {e or 'address in use?'}") from None
    if not server.started:
        raise UserError(f"cannot listen on {cfg.host}:{cfg.port} (in use?)")
    log.info("server stopped")
    return 0
